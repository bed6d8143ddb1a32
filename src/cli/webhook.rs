//! `voxguard webhook sign|verify`: for users checking their setup before a provider calls. `sign`
//! prints the headers the provider would send for a request; `verify` checks a captured request and
//! says why it fails (the proxy itself only ever answers a generic 403). Both use the same scheme code
//! as the proxy.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::admission::signature::encoding::{sha256, to_hex};
use crate::admission::signature::{SignedRequest, scheme_for, unix_now};
use crate::config::webhook::{
    HmacAlgorithm, HmacSpec, MacEncoding, SchemeKind, Secret, SecretRef, resolve,
};

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Print the signature header(s) a provider would send for this request.
    Sign(Box<WebhookArgs>),
    /// Check a captured request's signature; exit 0 if it verifies, 1 (with the reason) if not.
    Verify(Box<WebhookArgs>),
}

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// twilio, github, stripe, standard-webhooks (or svix), slack, telnyx or hmac.
    #[arg(long)]
    scheme: String,
    /// Environment variable holding the secret (Telnyx: the public key to verify, the private key to sign).
    #[arg(
        long,
        conflicts_with = "secret_file",
        required_unless_present = "secret_file"
    )]
    secret_env: Option<String>,
    /// File holding the secret.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// The full URL the provider calls, e.g. https://voice.example.com/voice?x=1 (Twilio signs it).
    #[arg(long, default_value = "https://localhost/")]
    url: String,
    /// A form parameter `name=value` (repeatable); the body becomes the form.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// The raw body.
    #[arg(long, conflicts_with = "params")]
    body_file: Option<PathBuf>,
    /// A request header `Name: value` (repeatable): the captured signature headers for `verify`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Unix time to sign at, or to verify against (default: now).
    #[arg(long)]
    timestamp: Option<u64>,
    /// Delivery id to sign with (Standard Webhooks `webhook-id`).
    #[arg(long)]
    id: Option<String>,
    /// Timestamp tolerance for `verify`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    tolerance: std::time::Duration,
    /// hmac: the signature header.
    #[arg(long)]
    hmac_header: Option<String>,
    /// hmac: sha256 or sha1.
    #[arg(long, default_value = "sha256")]
    algorithm: String,
    /// hmac: hex or base64.
    #[arg(long, default_value = "hex")]
    encoding: String,
    /// hmac: text before the encoded MAC, e.g. "sha256=".
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Exit code of a signature that does not verify.
pub const EXIT_INVALID: i32 = 1;
/// Exit code of unusable arguments or an unreadable secret.
pub const EXIT_USAGE: i32 = 64;

/// Runs the command with `env` for `--secret-env`; returns the exit code.
pub fn run(cmd: WebhookCommand, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let (signing, args) = match cmd {
        WebhookCommand::Sign(a) => (true, a),
        WebhookCommand::Verify(a) => (false, a),
    };
    match execute(signing, &args, env) {
        Ok(Outcome::Printed(lines)) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Ok(Outcome::Invalid(reason)) => {
            println!("invalid: {reason}");
            EXIT_INVALID
        }
        Err(message) => {
            eprintln!("error: {message}");
            EXIT_USAGE
        }
    }
}

enum Outcome {
    Printed(Vec<String>),
    Invalid(String),
}

fn scheme_kind(a: &WebhookArgs) -> Result<SchemeKind, String> {
    let mut kind: SchemeKind = a.scheme.parse()?;
    if let SchemeKind::Hmac(spec) = &mut kind {
        *spec = HmacSpec {
            header: a
                .hmac_header
                .clone()
                .ok_or("--scheme hmac needs --hmac-header")?
                .to_ascii_lowercase(),
            algorithm: match a.algorithm.as_str() {
                "sha256" => HmacAlgorithm::Sha256,
                "sha1" => HmacAlgorithm::Sha1,
                other => return Err(format!("--algorithm {other:?} is not sha256 or sha1")),
            },
            encoding: match a.encoding.as_str() {
                "hex" => MacEncoding::Hex,
                "base64" => MacEncoding::Base64,
                other => return Err(format!("--encoding {other:?} is not hex or base64")),
            },
            prefix: a.prefix.clone(),
            id_header: None,
        };
    }
    Ok(kind)
}

fn execute(
    signing: bool,
    a: &WebhookArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Outcome, String> {
    let kind = scheme_kind(a)?;
    let secret_ref = match (&a.secret_env, &a.secret_file) {
        (Some(name), _) => SecretRef::Env(name.clone()),
        (None, Some(path)) => SecretRef::File(path.clone()),
        (None, None) => return Err("set --secret-env or --secret-file".into()),
    };
    let secret = resolve(&secret_ref, env)?;

    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?} must look like \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header {h:?}: bad header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("--header {h:?}: bad header value"))?;
        headers.append(name, value);
    }
    let mut url = a.url.clone();
    let body = if !a.params.is_empty() {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for p in &a.params {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--param {p:?} must look like name=value"))?;
            form.append_pair(k, v);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        form.finish().into_bytes()
    } else if let Some(path) = &a.body_file {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    } else {
        Vec::new()
    };
    if signing
        && kind == SchemeKind::Twilio
        && a.params.is_empty()
        && !body.is_empty()
        && !url.contains("bodySHA256=")
    {
        // As Twilio does for a JSON body: its hash goes into the URL, and the URL is signed.
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}bodySHA256={}", to_hex(&sha256(&body)));
        eprintln!("signed URL (Twilio adds the body hash): {url}");
    }
    if signing && let Some(id) = &a.id {
        headers.insert(
            "webhook-id",
            HeaderValue::from_str(id).map_err(|_| "--id: not a header value")?,
        );
    }
    let req = SignedRequest {
        method: &Method::POST,
        url: &url,
        headers: &headers,
        body: &body,
        now: a.timestamp.unwrap_or_else(unix_now),
    };
    let scheme = scheme_for(&kind, a.tolerance);
    if signing {
        // Telnyx signs with the private key as given; the others with the decoded secret.
        let key = if kind == SchemeKind::Telnyx {
            secret.into_bytes()
        } else {
            kind.decode_secret(&secret)
                .map_err(|why| format!("{secret_ref} {why}"))?
        };
        let signed = scheme.sign(&req, &key)?;
        let mut lines: Vec<String> = signed.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        if !a.params.is_empty() {
            lines.push("Content-Type: application/x-www-form-urlencoded".into());
        }
        Ok(Outcome::Printed(lines))
    } else {
        let key = Secret::new(
            kind.decode_secret(&secret)
                .map_err(|why| format!("{secret_ref} {why}"))?,
        );
        match scheme.verify(&req, &[key]) {
            Ok(_) => Ok(Outcome::Printed(vec!["valid".into()])),
            Err(failure) => Ok(Outcome::Invalid(failure.to_string())),
        }
    }
}
