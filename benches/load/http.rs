//! HTTP mode: `--connections` clients send requests back to back for the run, either over one
//! keep-alive connection each or over a new TLS connection per request (resumed from the client's
//! session cache). `--post-bytes` sends a Twilio-like form body; `--sign-github SECRET` signs each
//! (unique) body as GitHub does, and `--sign-twilio TOKEN` as Twilio does (HMAC-SHA1 of
//! `--public-url` + path + the sorted form, with an idempotency token), so a signed route verifies
//! every request and none is a replay. `--idle` measures memory instead: each connection sends one
//! GET and then nothing, as the keep-alive connections a busy edge leaves open between requests.
//! `--h2` speaks HTTP/2 instead (ALPN `h2`, one request at a time per connection, as HTTP/1.1
//! keep-alive does, so that the two compare request for request); its modes are named `http2_*`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::hmac;
use serde_json::json;

use crate::Common;
use crate::net::Target;
use crate::report::{self, ProcSample, Span, Window};

#[derive(Args)]
pub struct HttpArgs {
    /// e.g. https://127.0.0.1:8443/
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// A new connection for every request instead of keep-alive.
    #[arg(long)]
    new_connections: bool,
    /// Open the connections over the first half of the warm-up, one GET each, then send nothing
    /// until the run ends: the proxy's memory per idle keep-alive connection. After the run each
    /// connection sends one more GET; one the proxy closed meanwhile counts as an error.
    #[arg(long, conflicts_with_all = ["new_connections", "post_bytes"])]
    idle: bool,
    /// POST a form body of about this many bytes instead of GET.
    #[arg(long)]
    post_bytes: Option<usize>,
    /// Sign each POST with this secret as GitHub does (`X-Hub-Signature-256`, `X-GitHub-Delivery`).
    #[arg(long, requires = "post_bytes")]
    sign_github: Option<String>,
    /// Sign each POST with this Auth Token as Twilio does (`X-Twilio-Signature`,
    /// `I-Twilio-Idempotency-Token`), over `--public-url` and the request's path.
    #[arg(long, requires = "post_bytes", conflicts_with = "sign_github")]
    sign_twilio: Option<String>,
    /// The origin Twilio calls: the route's `public_url`.
    #[arg(long, default_value = "https://voice.example.com")]
    public_url: String,
    /// HTTP/2 (negotiated by ALPN; a server that does not choose `h2` is an error).
    #[arg(long)]
    h2: bool,
    #[command(flatten)]
    common: Common,
}

struct Load {
    target: Target,
    post_bytes: Option<usize>,
    signer: Option<Signer>,
    span: Span,
    new_connections: bool,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    hist: Option<hdrhistogram::Histogram<u64>>,
}

pub async fn run(args: HttpArgs) -> anyhow::Result<()> {
    let target = Target::parse_for(&args.url, args.common.ca.as_deref(), args.h2)?;
    if args.idle {
        return run_idle(&args, Arc::new(target)).await;
    }
    let mut window = Window::new(args.common.warmup, args.common.duration);
    let signer = signer(&args, &target);
    let load = Arc::new(Load {
        target,
        post_bytes: args.post_bytes,
        signer,
        span: window.span,
        new_connections: args.new_connections,
    });
    let workers: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(worker(load.clone(), i as u64)))
        .collect();
    window.begin(&args.common).await;
    let usage = window.finish(&args.common).await;
    let mut hist = report::histogram();
    let (mut ok, mut errors) = (0, 0);
    for w in workers {
        let t = w.await?;
        ok += t.ok;
        errors += t.errors;
        if let Some(h) = t.hist {
            hist.add(h)?;
        }
    }
    let mode = match (
        args.new_connections,
        args.post_bytes.is_some(),
        &load.signer,
    ) {
        (true, _, _) => "http_new_connection",
        (false, true, Some(Signer::GitHub(_))) => "http_signed_post",
        (false, true, Some(Signer::Twilio { .. })) => "http_twilio_post",
        (false, true, None) => "http_post",
        (false, false, _) => "http_get",
    };
    let mode = protocol_mode(mode, args.h2);
    let v = report::result(
        &mode,
        &args.common,
        (ok, errors),
        &hist,
        usage,
        json!({"connections": args.connections}),
    );
    println!("{v}");
    Ok(())
}

/// `--idle`: the RSS the proxy gained per open connection, halfway through the run, against its RSS
/// before the first one opened.
async fn run_idle(args: &HttpArgs, target: Arc<Target>) -> anyhow::Result<()> {
    let pids = args.common.pids.clone();
    let baseline = ProcSample::read(&pids);
    let mut window = Window::new(args.common.warmup, args.common.duration);
    let opened = Instant::now();
    let ramp = args.common.warmup / 2;
    let count = args.connections.max(1);
    let connections: Vec<_> = (0..args.connections)
        .map(|i| {
            let target = target.clone();
            let at = opened + ramp.mul_f64(i as f64 / count as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let mut sender = connect(&target).await?;
                get(&mut sender, &target).await?;
                anyhow::Ok(sender)
            })
        })
        .collect();
    window.begin(&args.common).await;
    tokio::time::sleep(args.common.duration / 2).await;
    let loaded = ProcSample::read(&pids);
    let usage = window.finish(&args.common).await;
    let (mut held, mut errors) = (0, 0);
    for c in connections {
        let still_open = match c.await? {
            Ok(mut sender) => get(&mut sender, &target).await.is_ok(),
            Err(_) => false,
        };
        if still_open {
            held += 1;
        } else {
            errors += 1;
        }
    }
    let rss_per_connection = loaded.rss_kib.saturating_sub(baseline.rss_kib) as f64 / count as f64;
    let v = report::result(
        &protocol_mode("http_idle", args.h2),
        &args.common,
        (held, errors),
        &report::histogram(),
        usage,
        json!({
            "connections": args.connections,
            "rss_per_connection_kib": if pids.is_empty() { serde_json::Value::Null } else { rss_per_connection.into() },
        }),
    );
    println!("{v}");
    Ok(())
}

/// The result's mode: `http_*` over HTTP/1.1, `http2_*` over HTTP/2.
fn protocol_mode(mode: &str, h2: bool) -> String {
    match (h2, mode.strip_prefix("http_")) {
        (true, Some(rest)) => format!("http2_{rest}"),
        _ => mode.to_string(),
    }
}

/// One open client connection, HTTP/1.1 or HTTP/2.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Sends when the connection can take the request; the response's head.
    async fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }
}

/// One GET on an open connection, its body read to the end; `Err` unless it answered 2xx.
async fn get(sender: &mut Sender, target: &Target) -> anyhow::Result<()> {
    let response = sender
        .send(request_to(target).body(Full::default())?)
        .await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "answered {status}");
    Ok(())
}

async fn worker(load: Arc<Load>, id: u64) -> Tally {
    let mut tally = Tally {
        hist: Some(report::histogram()),
        ..Tally::default()
    };
    let mut sender: Option<Sender> = None;
    // Unique across runs too (a run nonce in the top 16 bits), so that loads repeated against one
    // proxy are never replays to its webhook replay cache.
    let mut n = (run_nonce() << 48) | (id << 32);
    loop {
        let started = Instant::now();
        if started >= load.span.end {
            return tally;
        }
        n += 1;
        let outcome = async {
            if sender.is_none() || load.new_connections {
                sender = Some(connect(&load.target).await?);
            }
            let s = sender.as_mut().expect("just connected");
            let response = s.send(load.request(n)).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let done = Instant::now();
        let counted = load.span.contains(done);
        match outcome {
            Ok(status) if status.is_success() => {
                if counted {
                    tally.ok += 1;
                    let _ = tally
                        .hist
                        .as_mut()
                        .expect("set")
                        .record((done - started).as_micros() as u64);
                }
            }
            Ok(_) | Err(_) => {
                if counted {
                    tally.errors += 1;
                }
                sender = None;
            }
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<Sender> {
    let io = TokioIo::new(target.connect().await?);
    if target.h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(Sender::H1(sender))
}

impl Load {
    fn request(&self, n: u64) -> hyper::Request<Full<Bytes>> {
        let builder = request_to(&self.target);
        let Some(size) = self.post_bytes else {
            return builder.body(Full::default()).expect("valid request");
        };
        let form = Form::new(n, size);
        let mut builder = builder.method(hyper::Method::POST).header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        match &self.signer {
            Some(Signer::GitHub(key)) => {
                let tag = hmac::sign(key, form.body.as_bytes());
                builder = builder
                    .header(
                        "x-hub-signature-256",
                        format!("sha256={}", hex(tag.as_ref())),
                    )
                    .header("x-github-delivery", format!("{n:016x}-load"));
            }
            Some(Signer::Twilio { key, url }) => {
                builder = builder
                    .header(
                        "x-twilio-signature",
                        twilio_signature(key, url, &mut form.params()),
                    )
                    .header("i-twilio-idempotency-token", format!("{n:016x}-load"));
            }
            None => {}
        }
        builder
            .body(Full::new(Bytes::from(form.body)))
            .expect("valid request")
    }
}

/// A request to the target's path with its `Host` (HTTP/2: the whole URL, whose authority becomes
/// `:authority`): a GET until a method and body are set.
fn request_to(target: &Target) -> hyper::http::request::Builder {
    if target.h2 {
        return hyper::Request::builder().uri(target.url.as_str());
    }
    hyper::Request::builder()
        .uri(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
}

/// How each POST is signed.
enum Signer {
    GitHub(hmac::Key),
    /// `url`: the public URL + path Twilio signs with the form.
    Twilio {
        key: TwilioKey,
        url: String,
    },
}

fn signer(args: &HttpArgs, target: &Target) -> Option<Signer> {
    if let Some(secret) = &args.sign_github {
        return Some(Signer::GitHub(hmac::Key::new(
            hmac::HMAC_SHA256,
            secret.as_bytes(),
        )));
    }
    let token = args.sign_twilio.as_ref()?;
    Some(Signer::Twilio {
        key: TwilioKey::new(token.as_bytes()),
        url: format!(
            "{}{}",
            args.public_url.trim_end_matches('/'),
            target.path_and_query
        ),
    })
}

/// Twilio's signature: base64 HMAC-SHA1 of the URL, then each form parameter's name and value,
/// decoded and sorted. Computed from the parameters `Form` encoded, not by parsing its body
/// again, and with the `sha1` crate (SHA extensions where the CPU has them): the generator shares
/// its core with the backend, and its own signing must not set the request rate.
fn twilio_signature(key: &TwilioKey, url: &str, params: &mut [(&str, &str)]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    params.sort_unstable();
    let mut inner = key.inner.clone();
    inner.update(url.as_bytes());
    for (k, v) in params.iter() {
        inner.update(k.as_bytes());
        inner.update(v.as_bytes());
    }
    let mut outer = key.outer.clone();
    outer.update(inner.finalize());
    base64::engine::general_purpose::STANDARD.encode(outer.finalize())
}

/// HMAC-SHA1 (RFC 2104) key state: SHA-1 after the key XOR ipad, and after the key XOR opad.
struct TwilioKey {
    inner: sha1::Sha1,
    outer: sha1::Sha1,
}

impl TwilioKey {
    fn new(token: &[u8]) -> Self {
        use sha1::Digest as _;
        let mut block = [0u8; 64];
        if token.len() > block.len() {
            block[..20].copy_from_slice(&sha1::Sha1::digest(token));
        } else {
            block[..token.len()].copy_from_slice(token);
        }
        let padded = |pad: u8| sha1::Sha1::new_with_prefix(block.map(|b| b ^ pad));
        Self {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }
}

/// 16 bits that differ between runs of the harness.
fn run_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_nanos() as u64 ^ u64::from(std::process::id())) & 0xffff
    })
}

/// A Twilio-style status callback, unique per request, padded to about `size` bytes: the body, and
/// its parameters decoded (what Twilio signs).
struct Form {
    body: String,
    call_sid: String,
    pad: &'static str,
}

impl Form {
    fn new(n: u64, size: usize) -> Self {
        /// Enough `x`s for any pad the harness asks for, made once.
        static PADDING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let call_sid = format!("CA{n:032x}");
        let mut body = format!(
            "AccountSid=AC00000000000000000000000000000000&CallSid={call_sid}&CallStatus=in-progress\
             &Direction=inbound&From=%2B14155550100&To=%2B14155550199&ApiVersion=2010-04-01&Digits=1"
        );
        let mut pad = "";
        if body.len() + 6 < size {
            let padding = PADDING.get_or_init(|| "x".repeat(64 * 1024));
            pad = &padding[..(size - body.len() - 5).min(padding.len())];
            body.push_str("&Pad=");
            body.push_str(pad);
        }
        Self {
            body,
            call_sid,
            pad,
        }
    }

    /// Each parameter's name and decoded value, in the body's order. Written out beside the body's
    /// literal rather than serialised into it: encoding the body per request cost the generator
    /// ~8 % of its direct rate. A mismatch fails every signature, which the load-harness test sees.
    fn params(&self) -> Vec<(&str, &str)> {
        let mut p = vec![
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("CallSid", self.call_sid.as_str()),
            ("CallStatus", "in-progress"),
            ("Direction", "inbound"),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("ApiVersion", "2010-04-01"),
            ("Digits", "1"),
        ];
        if !self.pad.is_empty() {
            p.push(("Pad", self.pad));
        }
        p
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
