//! `[route.webhook]`: which signature scheme a route requires, its secrets (by reference, resolved at
//! load and on every reload so rotation is a SIGHUP), the public URL for URL-signing schemes, and the
//! replay window. Secret values are decoded into key bytes here, once, and never printed: `Secret`'s
//! `Debug` is masked and `check` prints only the references.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::admission::signature::encoding::HmacKey;

use super::defaults as d;
use super::file::{OneOrMany, WebhookFile};
use super::{Errors, ser_duration};

/// A provider's signing scheme, with the options of the generic one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeKind {
    Twilio,
    Github,
    Stripe,
    StandardWebhooks,
    Slack,
    Telnyx,
    Hmac(HmacSpec),
}

impl SchemeKind {
    /// The name used in config, metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SchemeKind::Twilio => "twilio",
            SchemeKind::Github => "github",
            SchemeKind::Stripe => "stripe",
            SchemeKind::StandardWebhooks => "standard-webhooks",
            SchemeKind::Slack => "slack",
            SchemeKind::Telnyx => "telnyx",
            SchemeKind::Hmac(_) => "hmac",
        }
    }

    /// Schemes that sign a timestamp and so have a tolerance.
    pub fn timestamped(&self) -> bool {
        matches!(
            self,
            SchemeKind::Stripe
                | SchemeKind::StandardWebhooks
                | SchemeKind::Slack
                | SchemeKind::Telnyx
        )
    }

    /// Turns a secret as the provider shows it into the key bytes the scheme uses.
    /// The error never contains the secret.
    pub fn decode_secret(&self, secret: &str) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            // Standard Webhooks / Svix: "whsec_" + base64 of the key bytes.
            SchemeKind::StandardWebhooks => {
                let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
                match b64.decode(raw) {
                    Ok(k) if !k.is_empty() => Ok(k),
                    _ => Err("is not a Standard Webhooks secret (\"whsec_\" + base64)".into()),
                }
            }
            // Telnyx: the account's Ed25519 public key, base64 of 32 bytes.
            SchemeKind::Telnyx => match b64.decode(secret) {
                Ok(k) if k.len() == 32 => Ok(k),
                _ => Err("is not a Telnyx public key (base64 of 32 bytes)".into()),
            },
            // Stripe keys with the whole "whsec_…" string; the others with the bytes as shown.
            _ => Ok(secret.as_bytes().to_vec()),
        }
    }
}

impl std::str::FromStr for SchemeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "twilio" => SchemeKind::Twilio,
            "github" => SchemeKind::Github,
            "stripe" => SchemeKind::Stripe,
            "standard-webhooks" | "svix" => SchemeKind::StandardWebhooks,
            "slack" => SchemeKind::Slack,
            "telnyx" => SchemeKind::Telnyx,
            "hmac" => SchemeKind::Hmac(HmacSpec::default()),
            other => {
                return Err(format!(
                    "{other:?} is not one of twilio, github, stripe, standard-webhooks (or svix), slack, telnyx, hmac"
                ));
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha256,
    Sha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MacEncoding {
    Hex,
    Base64,
}

/// The generic scheme: `header: <prefix><encoded HMAC of the raw body>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HmacSpec {
    /// Lower-case header name.
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: MacEncoding,
    pub prefix: String,
    /// A header whose value identifies a delivery (remembered for replay protection).
    pub id_header: Option<String>,
}

impl Default for HmacSpec {
    fn default() -> Self {
        Self {
            header: "x-hub-signature-256".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: MacEncoding::Hex,
            prefix: "sha256=".into(),
            id_header: None,
        }
    }
}

/// Where a secret comes from; this, not the value, is what `check` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Key bytes, decoded from a secret. Cheap to clone; never printed.
#[derive(Clone)]
pub struct Secret(Arc<SecretKey>);

struct SecretKey {
    bytes: Box<[u8]>,
    /// HMAC keys derived on first use and kept for the life of the config: deriving one hashes the
    /// padded key twice, which a signed route would otherwise pay on every request.
    hmac_sha256: std::sync::OnceLock<HmacKey>,
    hmac_sha1: std::sync::OnceLock<HmacKey>,
}

impl Secret {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(Arc::new(SecretKey {
            bytes: bytes.into(),
            hmac_sha256: std::sync::OnceLock::new(),
            hmac_sha1: std::sync::OnceLock::new(),
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// This secret as an HMAC key for `algorithm`.
    pub fn hmac_key(&self, algorithm: HmacAlgorithm) -> &HmacKey {
        let cell = match algorithm {
            HmacAlgorithm::Sha256 => &self.0.hmac_sha256,
            HmacAlgorithm::Sha1 => &self.0.hmac_sha1,
        };
        cell.get_or_init(|| HmacKey::new(algorithm, &self.0.bytes))
    }
}

/// Equal key bytes; the derived keys follow from them.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for Secret {}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The origin a provider calls, e.g. `https://voice.example.com`: what a URL-signing scheme signs,
/// since the backend only sees the internal host and plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `https` or `http` (a WebSocket handshake is signed as `wss`/`ws`).
    pub secure: bool,
    /// Host and, if given, port, exactly as written.
    pub authority: String,
}

impl PublicUrl {
    /// The URL the provider signed: this origin plus the request's raw path and query. Built in
    /// one allocation of the exact size (per signed request; `format!` grew it twice).
    pub fn url_for(&self, path_and_query: &str, websocket: bool) -> String {
        let scheme = match (self.secure, websocket) {
            (true, false) => "https://",
            (false, false) => "http://",
            (true, true) => "wss://",
            (false, true) => "ws://",
        };
        [scheme, &self.authority, path_and_query].concat()
    }
}

impl std::str::FromStr for PublicUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} must be the scheme, host and optional port the provider calls, with no path, e.g. \"https://voice.example.com\""
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let secure = match scheme {
            "https" | "wss" => true,
            "http" | "ws" => false,
            _ => return Err(bad()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let valid = !authority.is_empty()
            && !authority.contains(['/', '?', '#', '@', ' '])
            && authority.parse::<http::uri::Authority>().is_ok();
        if !valid {
            return Err(bad());
        }
        Ok(PublicUrl {
            secure,
            authority: authority.to_string(),
        })
    }
}

/// Remembering accepted delivery ids so a repeat is refused (409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplayConfig {
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    pub max_entries: usize,
}

/// A validated `[route.webhook]`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookConfig {
    pub scheme: SchemeKind,
    /// Where the secrets come from, in order; any of them verifies (rotation).
    #[serde(serialize_with = "ser_refs")]
    pub secret_refs: Vec<SecretRef>,
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    #[serde(serialize_with = "ser_public_url")]
    pub public_url: Option<PublicUrl>,
    /// How far a signed timestamp may be from now, either way (timestamped schemes only).
    #[serde(serialize_with = "ser_duration")]
    pub tolerance: Duration,
    /// `None`: replay protection off.
    pub replay: Option<ReplayConfig>,
    /// The whole body must arrive within this, or 408.
    #[serde(serialize_with = "ser_duration")]
    pub body_timeout: Duration,
}

fn ser_refs<S: serde::Serializer>(v: &[SecretRef], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|r| r.to_string()))
}

fn ser_public_url<S: serde::Serializer>(v: &Option<PublicUrl>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(u) => s.collect_str(&u.url_for("", false)),
    }
}

fn refs(v: Option<&OneOrMany>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
    }
}

/// The largest secret file read: secrets and keys are a few dozen bytes, so anything bigger is a
/// wrong path (a log, a disk image) and is refused rather than read into memory.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file, refusing what is not a regular file (a FIFO or `/dev/stdin` would block
/// start-up forever, `/dev/zero` would never end) and what is larger than
/// [`MAX_SECRET_FILE_BYTES`]. Symlinks are followed, as Kubernetes secret volumes need.
fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let not_regular = || format!("{} is not a regular file", path.display());
    // stat before open: opening a FIFO for reading blocks until a writer appears.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(not_regular());
    }
    let mut raw = String::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(cannot)?;
    if raw.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds one secret",
            path.display()
        ));
    }
    Ok(raw)
}

/// Reads a secret; surrounding whitespace (the newline `echo` and editors add) is not part of it.
pub fn resolve(r: &SecretRef, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let raw = match r {
        SecretRef::Env(name) => {
            env(name).ok_or_else(|| format!("environment variable {name} is not set"))?
        }
        SecretRef::File(path) => read_secret_file(path)?,
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(format!("{r} is empty"));
    }
    Ok(trimmed.to_string())
}

/// Validates one route's `webhook` table; `key` is its path, e.g. `route[0].webhook`.
pub(super) fn validate(
    e: &mut Errors,
    key: &str,
    f: &WebhookFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<WebhookConfig> {
    let k = |s: &str| format!("{key}.{s}");
    let mut scheme = match f.scheme.as_deref().map(str::parse::<SchemeKind>) {
        Some(Ok(s)) => s,
        Some(Err(reason)) => {
            e.push(k("scheme"), reason);
            return None;
        }
        None => {
            e.push(k("scheme"), "required");
            return None;
        }
    };
    let hmac_keys = [
        ("header", f.header.is_some()),
        ("algorithm", f.algorithm.is_some()),
        ("encoding", f.encoding.is_some()),
        ("prefix", f.prefix.is_some()),
        ("id_header", f.id_header.is_some()),
    ];
    if let SchemeKind::Hmac(spec) = &mut scheme {
        hmac_spec(e, &k, f, spec);
    } else {
        for (name, set) in hmac_keys {
            if set {
                e.push(k(name), "only used by scheme = \"hmac\"");
            }
        }
    }

    let public_url = match f.public_url.as_deref() {
        None if scheme == SchemeKind::Twilio => {
            e.push(
                k("public_url"),
                "required for twilio: the scheme, host and port Twilio calls, e.g. \"https://voice.example.com\"",
            );
            None
        }
        None => None,
        Some(_) if scheme != SchemeKind::Twilio => {
            e.push(
                k("public_url"),
                "only used by twilio (the other schemes do not sign the URL)",
            );
            None
        }
        Some(v) => match v.parse::<PublicUrl>() {
            Ok(u) => Some(u),
            Err(reason) => {
                e.push(k("public_url"), reason);
                None
            }
        },
    };

    let mut secret_refs: Vec<SecretRef> = refs(f.secret_env.as_ref())
        .into_iter()
        .map(SecretRef::Env)
        .collect();
    secret_refs.extend(
        refs(f.secret_file.as_ref())
            .into_iter()
            .map(|p| SecretRef::File(p.into())),
    );
    if secret_refs.is_empty() {
        e.push(
            key.to_string(),
            "set secret_env or secret_file (a name or a list of names: during rotation old and new both verify)",
        );
    }
    let mut secrets = Vec::new();
    for r in &secret_refs {
        let which = match r {
            SecretRef::Env(_) => "secret_env",
            SecretRef::File(_) => "secret_file",
        };
        match resolve(r, env)
            .and_then(|s| scheme.decode_secret(&s).map_err(|why| format!("{r} {why}")))
        {
            Ok(bytes) => secrets.push(Secret::new(bytes)),
            Err(reason) => e.push(k(which), reason),
        }
    }

    if f.tolerance.is_some() && !scheme.timestamped() {
        e.push(
            k("tolerance"),
            format!("{} signs no timestamp", scheme.name()),
        );
    }
    let tolerance = e.duration(
        &k("tolerance"),
        f.tolerance.as_deref(),
        d::WEBHOOK_TOLERANCE,
    );
    let default_window = if scheme.timestamped() {
        // An id older than the tolerance is refused as stale anyway.
        tolerance * 2
    } else {
        d::WEBHOOK_REPLAY_WINDOW
    };
    let replay = f.replay.unwrap_or(true).then(|| ReplayConfig {
        window: e.duration(
            &k("replay_window"),
            f.replay_window.as_deref(),
            default_window,
        ),
        max_entries: e.positive(
            &k("replay_max_entries"),
            f.replay_max_entries,
            d::WEBHOOK_REPLAY_MAX_ENTRIES,
        ) as usize,
    });
    let body_timeout = e.duration(
        &k("body_timeout"),
        f.body_timeout.as_deref(),
        d::WEBHOOK_BODY_TIMEOUT,
    );
    Some(WebhookConfig {
        scheme,
        secret_refs,
        secrets,
        public_url,
        tolerance,
        replay,
        body_timeout,
    })
}

fn hmac_spec(e: &mut Errors, k: &dyn Fn(&str) -> String, f: &WebhookFile, spec: &mut HmacSpec) {
    match f.header.as_deref() {
        None => e.push(k("header"), "required for scheme = \"hmac\""),
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => spec.header = name.as_str().to_string(),
            Err(_) => e.push(k("header"), format!("{h:?} is not a header name")),
        },
    }
    spec.algorithm = match f.algorithm.as_deref() {
        None | Some("sha256") => HmacAlgorithm::Sha256,
        Some("sha1") => HmacAlgorithm::Sha1,
        Some(other) => {
            e.push(
                k("algorithm"),
                format!("{other:?} is not one of \"sha256\", \"sha1\""),
            );
            HmacAlgorithm::Sha256
        }
    };
    spec.encoding = match f.encoding.as_deref() {
        None | Some("hex") => MacEncoding::Hex,
        Some("base64") => MacEncoding::Base64,
        Some(other) => {
            e.push(
                k("encoding"),
                format!("{other:?} is not one of \"hex\", \"base64\""),
            );
            MacEncoding::Hex
        }
    };
    spec.prefix = f.prefix.clone().unwrap_or_default();
    spec.id_header = match f.id_header.as_deref() {
        None => None,
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => Some(name.as_str().to_string()),
            Err(_) => {
                e.push(k("id_header"), format!("{h:?} is not a header name"));
                None
            }
        },
    };
}

#[cfg(test)]
mod tests {
    use super::MAX_SECRET_FILE_BYTES;
    use crate::config::{Config, ConfigError};

    const BASE: &str = "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nupstream = \"a\"\n[route.webhook]\n";

    fn env(k: &str) -> Option<String> {
        match k {
            "TOKEN" => Some("s3cret-token\n".into()),
            "OLD" => Some("old-token".into()),
            "SVIX" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            _ => None,
        }
    }

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), "t.toml", &env)
    }

    fn errors(extra: &str) -> String {
        parse(extra).unwrap_err().to_string()
    }

    /// The URL a provider signed: the configured origin with the request's path and query as sent,
    /// over `wss`/`ws` for a WebSocket handshake.
    #[test]
    fn the_signed_url_joins_origin_path_and_query() {
        let url = |origin: &str, ws| {
            origin
                .parse::<super::PublicUrl>()
                .unwrap()
                .url_for("/voice?From=%2B1&x=1", ws)
        };
        assert_eq!(
            url("https://voice.example.com/", false),
            "https://voice.example.com/voice?From=%2B1&x=1"
        );
        assert_eq!(
            url("https://voice.example.com:8443", true),
            "wss://voice.example.com:8443/voice?From=%2B1&x=1"
        );
        assert_eq!(
            url("http://10.0.0.1:8080", false),
            "http://10.0.0.1:8080/voice?From=%2B1&x=1"
        );
        assert_eq!(
            url("ws://[::1]:9", true),
            "ws://[::1]:9/voice?From=%2B1&x=1"
        );
    }

    #[test]
    fn secrets_resolve_in_order_and_are_never_printed() {
        let c = parse(
            "scheme = \"twilio\"\nsecret_env = [\"TOKEN\", \"OLD\"]\npublic_url = \"https://voice.example.com/\"\n",
        )
        .unwrap();
        let w = c.routes[0].webhook.as_ref().unwrap();
        assert_eq!(
            w.secrets[0].bytes(),
            b"s3cret-token",
            "trailing newline trimmed"
        );
        assert_eq!(w.secrets[1].bytes(), b"old-token");
        assert_eq!(
            c.routes[0].max_body_bytes,
            1024 * 1024,
            "signed routes cap at 1 MiB"
        );
        let shown = c.to_toml();
        assert!(
            shown.contains("env:TOKEN") && shown.contains("https://voice.example.com"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !format!("{c:?}").contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "file-secret\n").unwrap();
        let c = parse(&format!(
            "scheme = \"github\"\nsecret_file = {:?}\n",
            path.display()
        ))
        .unwrap();
        assert_eq!(
            c.routes[0].webhook.as_ref().unwrap().secrets[0].bytes(),
            b"file-secret"
        );
    }

    #[test]
    fn secret_files_that_are_not_small_regular_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let cases = [
            (fifo.clone(), "is not a regular file"),
            ("/dev/zero".into(), "is not a regular file"),
            (dir.path().to_path_buf(), "is not a regular file"),
            (big.clone(), "is larger than 65536 bytes"),
        ];
        for (path, why) in cases {
            let err = errors(&format!(
                "scheme = \"github\"\nsecret_file = {:?}\n",
                path.display()
            ));
            assert!(
                err.contains("route[0].webhook.secret_file") && err.contains(why),
                "{}: {err}",
                path.display()
            );
        }
    }

    #[test]
    fn bad_webhook_keys_are_named_without_the_secret() {
        let cases = [
            (
                "scheme = \"twilio\"\nsecret_env = \"MISSING\"\n",
                "route[0].webhook.secret_env: environment variable MISSING is not set",
            ),
            (
                "scheme = \"twilio\"\nsecret_env = \"TOKEN\"\n",
                "route[0].webhook.public_url: required for twilio",
            ),
            (
                "scheme = \"standard-webhooks\"\nsecret_env = \"TOKEN\"\n",
                "route[0].webhook.secret_env: env:TOKEN is not a Standard Webhooks secret",
            ),
            (
                "scheme = \"telnyx\"\nsecret_env = \"TOKEN\"\n",
                "route[0].webhook.secret_env: env:TOKEN is not a Telnyx public key",
            ),
            (
                "scheme = \"md5\"\nsecret_env = \"TOKEN\"\n",
                "route[0].webhook.scheme: \"md5\" is not one of",
            ),
            (
                "scheme = \"github\"\n",
                "route[0].webhook: set secret_env or secret_file",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"TOKEN\"\ntolerance = \"1m\"\n",
                "route[0].webhook.tolerance: github signs no timestamp",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"TOKEN\"\nheader = \"x\"\n",
                "route[0].webhook.header: only used by scheme = \"hmac\"",
            ),
            (
                "scheme = \"hmac\"\nsecret_env = \"TOKEN\"\n",
                "route[0].webhook.header: required for scheme = \"hmac\"",
            ),
            (
                "scheme = \"github\"\nsecret_env = \"TOKEN\"\npublic_url = \"https://x.example\"\n",
                "route[0].webhook.public_url: only used by twilio",
            ),
            (
                "scheme = \"twilio\"\nsecret_env = \"TOKEN\"\npublic_url = \"https://x.example/voice\"\n",
                "route[0].webhook.public_url: \"https://x.example/voice\" must be",
            ),
        ];
        for (table, expected) in cases {
            let e = errors(table);
            assert!(e.contains(expected), "{table}: {e}");
            assert!(!e.contains("s3cret"), "the secret leaked: {e}");
        }
    }

    #[test]
    fn defaults_follow_the_scheme() {
        let c = parse("scheme = \"svix\"\nsecret_env = \"SVIX\"\n").unwrap();
        let w = c.routes[0].webhook.as_ref().unwrap();
        assert_eq!(w.scheme.name(), "standard-webhooks");
        assert_eq!(w.tolerance.as_secs(), 300);
        assert_eq!(
            w.replay.unwrap().window.as_secs(),
            600,
            "twice the tolerance"
        );
        let c = parse("scheme = \"github\"\nsecret_env = \"TOKEN\"\nreplay = false\n").unwrap();
        assert!(c.routes[0].webhook.as_ref().unwrap().replay.is_none());
        let c = parse(
            "scheme = \"hmac\"\nsecret_env = \"TOKEN\"\nheader = \"X-Signature\"\nalgorithm = \"sha1\"\nencoding = \"base64\"\n",
        )
        .unwrap();
        match &c.routes[0].webhook.as_ref().unwrap().scheme {
            super::SchemeKind::Hmac(spec) => {
                assert_eq!(spec.header, "x-signature");
                assert_eq!(spec.prefix, "");
            }
            other => panic!("{other:?}"),
        }
    }
}
