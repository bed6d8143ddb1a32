//! Configuration: `proxy.toml` → [`file::FileConfig`] (serde, `deny_unknown_fields`) → validated [`Config`].
//!
//! Precedence: built-in defaults (`defaults.rs`) < the file < environment overrides
//! (`VOXGUARD_LISTEN`, `VOXGUARD_ADMIN_LISTEN`, `VOXGUARD_LOG_LEVEL`, `VOXGUARD_LOG_FORMAT`).
//! The environment is passed in as a lookup function so tests never touch the process environment.
//! Validation collects every problem before failing, each naming its key path, e.g.
//! `route[1].upstream: no upstream named "voic"`.

pub mod audit;
pub mod defaults;
pub mod file;
pub mod media;
pub mod recording;
pub mod webhook;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use file::FileConfig;

/// One invalid key: where it is and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a config could not be loaded. Every variant is a user error (exit code 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {} invalid key(s):\n{}", .errors.len(), .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, errors: Vec<KeyError> },
}

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub bans: BansConfig,
    pub recording: recording::RecordingConfig,
    pub keys: recording::KeysConfig,
    pub audit: audit::AuditConfig,
    pub alerts: Vec<AlertRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub grace_period: Duration,
    pub http_redirect_listen: Option<SocketAddr>,
    pub max_connections: usize,
    /// `None` = no per-address cap (the default: Twilio and load balancers concentrate many
    /// legitimate connections on few addresses).
    pub max_connections_per_ip: Option<u32>,
    /// Threads that run connections; `None` = one per CPU this process may use (affinity and
    /// cgroup quota included). Set it where the CPU limit is not visible to the process, or to
    /// leave cores to the backend beside it.
    pub worker_threads: Option<usize>,
    /// Every connection on `listen` starts with a PROXY protocol v1/v2 header (L4 load balancers).
    pub proxy_protocol: bool,
    #[serde(serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `None` disables the header.
    pub hsts: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(serialize_with = "ser_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Checked at accept, before TLS, against the TCP peer.
    #[serde(serialize_with = "ser_nets")]
    pub allow: Vec<ipnet::IpNet>,
    #[serde(serialize_with = "ser_nets")]
    pub deny: Vec<ipnet::IpNet>,
    pub tls: TlsConfig,
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKER_THREADS: u64 = 1024;

impl ServerConfig {
    /// The worker threads to start: `worker_threads`, or one per CPU this process may use.
    pub fn threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// `None` (with `key_file`) → a self-signed development certificate in `data_dir`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Who may call `/admin/*`; tokens are held only as SHA-256 hashes.
    pub tokens: Vec<AdminToken>,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reload, key rotation, bans.
    Operator,
    /// Read the audit log, reports, recording lists.
    Auditor,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    #[serde(serialize_with = "ser_hex32")]
    pub sha256: [u8; 32],
}

fn ser_hex32<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::admission::signature::encoding::to_hex(v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(serialize_with = "ser_display")]
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub response_timeout: Duration,
    /// A response body that sends nothing for this long is cut off (the client sees it end early).
    #[serde(serialize_with = "ser_duration")]
    pub read_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub preserve_host: bool,
    pub max_body_bytes: u64,
    pub websocket: bool,
    #[serde(serialize_with = "ser_duration")]
    pub websocket_idle_timeout: Duration,
    pub websocket_max_message_bytes: usize,
    /// Browser origins (`https://app.example`) allowed to open WebSockets on this route; empty =
    /// any. Stops cross-site WebSocket hijacking; non-browser clients send no `Origin` and pass.
    pub websocket_allowed_origins: Vec<String>,
    /// A side that stops reading: a write pending this long ends the session (1001 to the other).
    #[serde(serialize_with = "ser_duration")]
    pub websocket_write_timeout: Duration,
    /// Checked after routing against the client address (→ 403).
    #[serde(serialize_with = "ser_nets")]
    pub allow: Vec<ipnet::IpNet>,
    #[serde(serialize_with = "ser_nets")]
    pub deny: Vec<ipnet::IpNet>,
    pub rate_limit: Option<RateLimitConfig>,
    pub max_websocket_sessions_per_ip: Option<u32>,
    /// Signature verification; the body is buffered (up to `max_body_bytes`) on such routes.
    pub webhook: Option<webhook::WebhookConfig>,
    /// Media interception on a WebSocket route (implies `websocket = true`).
    pub media: Option<media::MediaConfig>,
}

/// What kind of offence a rule counts. The signature checks feed `SignatureFailure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    SignatureFailure,
    RateLimited,
    /// A missing, unknown or under-privileged token on the admin API.
    AdminAuth,
}

impl std::str::FromStr for Offence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "signature_failure" => Ok(Offence::SignatureFailure),
            "rate_limited" => Ok(Offence::RateLimited),
            "admin_auth" => Ok(Offence::AdminAuth),
            other => Err(format!(
                "{other:?} is not one of \"signature_failure\", \"rate_limited\", \"admin_auth\""
            )),
        }
    }
}

/// One rule: `count` offences of kind `on` within `window` → ban for `duration`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanRule {
    pub name: String,
    pub on: Offence,
    pub count: u32,
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
}

/// `[[alerts]]`: a gauge that says whether `threshold` offences of kind `on` happened in the window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlertRule {
    pub name: String,
    pub on: Offence,
    pub threshold: u32,
    pub window_minutes: u32,
}

/// `[bans]`: the rules and the bound on tracked addresses.
#[derive(Debug, Clone, Serialize)]
pub struct BansConfig {
    pub max_entries: usize,
    pub ipv6_prefix: u8,
    /// Addresses never banned and never counted (shared provider egress, monitoring).
    #[serde(serialize_with = "ser_nets")]
    pub exempt: Vec<ipnet::IpNet>,
    pub rules: Vec<BanRule>,
}

/// A rate such as `20/s`, `100/m`, `1000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: std::num::NonZeroU32,
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} must look like \"20/s\", \"100/m\" or \"1000/h\""))?;
        let count: std::num::NonZeroU32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: count must be a positive integer"))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unit {other:?} is not one of s, m, h")),
        };
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// One route's rate limits: per client address (IPv6 by prefix) and an optional route total,
/// each as (rate, burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    #[serde(serialize_with = "ser_rate")]
    pub per_ip: Option<(Rate, std::num::NonZeroU32)>,
    #[serde(serialize_with = "ser_rate")]
    pub total: Option<(Rate, std::num::NonZeroU32)>,
    pub ipv6_prefix: u8,
    pub max_keys: usize,
}

fn ser_rate<S: serde::Serializer>(
    v: &Option<(Rate, std::num::NonZeroU32)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some((rate, burst)) => s.collect_str(&format_args!("{rate} burst {burst}")),
    }
}

pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn ser_nets<S: serde::Serializer>(v: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.to_string()))
}

fn ser_display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Config {
    /// Reads and validates a file, with environment overrides from `env`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown, env)
    }

    /// Parses and validates config text; `origin` names the source in errors.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(file, env).map_err(|errors| ConfigError::Invalid {
            path: origin.to_string(),
            errors,
        })
    }

    /// The effective configuration as TOML, for `voxguard check`. Holds no secrets today; when
    /// secret references arrive they are printed as references, never resolved.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Validates an Origin allow list: each entry is `scheme://host[:port]` as browsers send it (no
/// path, no trailing slash), or `null`; stored lower-cased for comparison.
fn origins(e: &mut Errors, key: &str, list: Option<&[String]>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, origin) in list.unwrap_or_default().iter().enumerate() {
        let lower = origin.to_ascii_lowercase();
        let valid = lower == "null"
            || lower.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && !lower.ends_with('/')
                    && u.path() == "/"
                    && u.query().is_none()
            });
        if valid {
            out.push(lower);
        } else {
            e.push(
                format!("{key}[{i}]"),
                format!("{origin:?} must be scheme://host[:port] (as a browser sends Origin) or \"null\""),
            );
        }
    }
    out
}

/// Collects errors while converting; each conversion returns `Option` so validation continues.
pub(crate) struct Errors(Vec<KeyError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.push(key, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.push(
                        key,
                        format!("invalid duration {v:?} ({e}); use e.g. \"30s\" or \"5m\""),
                    );
                    default
                }
            },
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    key,
                    format!("invalid socket address {value:?}; use e.g. \"127.0.0.1:8443\""),
                );
                None
            }
        }
    }

    /// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or bare addresses (taken as /32 or /128).
    fn nets(&mut self, key: &str, value: Option<&Vec<String>>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, v) in value.into_iter().flatten().enumerate() {
            let parsed = v
                .parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.push(
                    format!("{key}[{i}]"),
                    format!("{v:?} is not an IP address or CIDR"),
                ),
            }
        }
        out
    }

    /// A name that becomes a metric label: letters, digits, `-`, `_`, `.`.
    fn label_name(&mut self, key: &str, name: &str) {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.push(
                key,
                "use letters, digits, '-', '_' or '.' (it becomes a metric label)",
            );
        }
    }

    /// An offence kind (`signature_failure`, `rate_limited`, `admin_auth`); required.
    fn offence(&mut self, key: &str, value: Option<&str>) -> Option<Offence> {
        match value.map(str::parse::<Offence>) {
            Some(Ok(on)) => Some(on),
            Some(Err(reason)) => {
                self.push(key, reason);
                None
            }
            None => {
                self.push(key, "required");
                None
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<u64>, default: u64) -> u64 {
        match value {
            Some(0) => {
                self.push(key, "must be greater than zero");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

fn validate(f: FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<KeyError>> {
    use defaults as d;
    let mut e = Errors(Vec::new());
    let placeholder: SocketAddr = ([127, 0, 0, 1], 0).into();

    let (listen_key, listen_value) = match env(d::ENV_LISTEN) {
        Some(v) => (d::ENV_LISTEN.to_string(), v),
        None => (
            "server.listen".to_string(),
            f.server.listen.clone().unwrap_or_else(|| d::LISTEN.into()),
        ),
    };
    let listen = e.addr(&listen_key, &listen_value).unwrap_or(placeholder);
    let (admin_key, admin_value) = match env(d::ENV_ADMIN_LISTEN) {
        Some(v) => (d::ENV_ADMIN_LISTEN.to_string(), v),
        None => (
            "admin.listen".to_string(),
            f.admin
                .listen
                .clone()
                .unwrap_or_else(|| d::ADMIN_LISTEN.into()),
        ),
    };
    let admin_listen = e.addr(&admin_key, &admin_value).unwrap_or(placeholder);
    let http_redirect_listen = f
        .server
        .http_redirect_listen
        .as_deref()
        .and_then(|v| e.addr("server.http_redirect_listen", v));
    if listen.port() != 0 && listen == admin_listen {
        e.push("admin.listen", "must differ from server.listen");
    }

    let s = &f.server;
    let max_header_bytes = e.positive(
        "server.max_header_bytes",
        s.max_header_bytes,
        d::MAX_HEADER_BYTES,
    );
    if max_header_bytes < 1024 {
        e.push("server.max_header_bytes", "must be at least 1024");
    }
    let hsts = match s.hsts.as_deref() {
        None => Some(d::HSTS.to_string()),
        Some("") => None,
        Some(v) if v.contains(['\r', '\n']) || http::HeaderValue::from_str(v).is_err() => {
            e.push("server.hsts", "not a valid header value");
            None
        }
        Some(v) => Some(v.to_string()),
    };
    let tls_file = &s.tls;
    if tls_file.cert_file.is_some() != tls_file.key_file.is_some() {
        e.push(
            "server.tls",
            "cert_file and key_file must be set together (or both left out for the dev certificate)",
        );
    }
    let server = ServerConfig {
        listen,
        data_dir: PathBuf::from(s.data_dir.as_deref().unwrap_or(d::DATA_DIR)),
        grace_period: e.duration(
            "server.grace_period",
            s.grace_period.as_deref(),
            d::GRACE_PERIOD,
        ),
        http_redirect_listen,
        proxy_protocol: s.proxy_protocol.unwrap_or(false),
        worker_threads: s.worker_threads.map(|v| {
            if v > MAX_WORKER_THREADS {
                e.push(
                    "server.worker_threads",
                    format!("must be at most {MAX_WORKER_THREADS}"),
                );
            }
            e.positive("server.worker_threads", Some(v), 1)
                .min(MAX_WORKER_THREADS) as usize
        }),
        max_connections_per_ip: s
            .max_connections_per_ip
            .map(|v| e.positive("server.max_connections_per_ip", Some(u64::from(v)), 1) as u32),
        max_connections: e.positive(
            "server.max_connections",
            s.max_connections,
            d::MAX_CONNECTIONS,
        ) as usize,
        header_read_timeout: e.duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            d::HEADER_READ_TIMEOUT,
        ),
        keepalive_timeout: e.duration(
            "server.keepalive_timeout",
            s.keepalive_timeout.as_deref(),
            d::KEEPALIVE_TIMEOUT,
        ),
        max_header_bytes: max_header_bytes as usize,
        max_headers: e.positive("server.max_headers", s.max_headers, d::MAX_HEADERS) as usize,
        hsts,
        trusted_proxies: e.nets("server.trusted_proxies", s.trusted_proxies.as_ref()),
        allow: e.nets("server.allow", s.allow.as_ref()),
        deny: e.nets("server.deny", s.deny.as_ref()),
        tls: TlsConfig {
            cert_file: tls_file.cert_file.as_deref().map(PathBuf::from),
            key_file: tls_file.key_file.as_deref().map(PathBuf::from),
            client_ca_file: tls_file.client_ca_file.as_deref().map(PathBuf::from),
            handshake_timeout: e.duration(
                "server.tls.handshake_timeout",
                tls_file.handshake_timeout.as_deref(),
                d::TLS_HANDSHAKE_TIMEOUT,
            ),
            reload_interval: e.duration(
                "server.tls.reload_interval",
                tls_file.reload_interval.as_deref(),
                d::TLS_RELOAD_INTERVAL,
            ),
        },
    };

    let level = env(d::ENV_LOG_LEVEL)
        .or(f.log.level.clone())
        .unwrap_or_else(|| d::LOG_LEVEL.into());
    if let Err(reason) = check_log_filter(&level) {
        e.push("log.level", reason);
    }
    let format = match env(d::ENV_LOG_FORMAT).or(f.log.format.clone()).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            e.push(
                "log.format",
                format!("{other:?} is not one of \"text\", \"json\""),
            );
            LogFormat::Text
        }
    };

    let mut upstreams = Vec::new();
    let mut names = HashSet::new();
    for (i, u) in f.upstream.iter().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let name = match u.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                e.push(key("name"), "required");
                continue;
            }
        };
        if !names.insert(name.clone()) {
            e.push(key("name"), format!("duplicate upstream name {name:?}"));
        }
        let url = match u.url.as_deref() {
            None => {
                e.push(key("url"), "required");
                continue;
            }
            Some(v) => match v.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && matches!(uri.path(), "" | "/")
                        && uri.query().is_none() =>
                {
                    uri
                }
                _ => {
                    e.push(
                        key("url"),
                        format!("{v:?} must be http:// or https:// with a host and no path, e.g. \"http://127.0.0.1:8080\""),
                    );
                    continue;
                }
            },
        };
        let connect_timeout = e.duration(
            &key("connect_timeout"),
            u.connect_timeout.as_deref(),
            d::UPSTREAM_CONNECT_TIMEOUT,
        );
        let response_timeout = e.duration(
            &key("response_timeout"),
            u.response_timeout.as_deref(),
            d::UPSTREAM_RESPONSE_TIMEOUT,
        );
        // The response timer runs from the request, connect included: were it not longer, a
        // blackholed backend would be reported as slow (504) instead of unreachable (502).
        if response_timeout <= connect_timeout {
            e.push(
                key("response_timeout"),
                format!(
                    "must be longer than connect_timeout ({}), which it includes",
                    humantime::format_duration(connect_timeout)
                ),
            );
        }
        upstreams.push(UpstreamConfig {
            name,
            url,
            ca_file: u.ca_file.as_deref().map(PathBuf::from),
            connect_timeout,
            response_timeout,
            read_timeout: e.duration(
                &key("read_timeout"),
                u.read_timeout.as_deref(),
                d::UPSTREAM_READ_TIMEOUT,
            ),
            pool_idle_timeout: e.duration(
                &key("pool_idle_timeout"),
                u.pool_idle_timeout.as_deref(),
                d::UPSTREAM_POOL_IDLE_TIMEOUT,
            ),
        });
    }

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    let mut seen_matches = HashSet::new();
    for (i, r) in f.route.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        if !route_names.insert(name.clone()) {
            e.push(key("name"), format!("duplicate route name {name:?}"));
        }
        e.label_name(&key("name"), &name);
        let path_prefix = match r.path_prefix.as_deref() {
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => {
                e.push(key("path_prefix"), format!("{p:?} must start with '/'"));
                continue;
            }
            None => "/".to_string(),
        };
        let upstream = match r.upstream.as_deref() {
            None => {
                e.push(key("upstream"), "required");
                continue;
            }
            Some(u) if !names.contains(u) => {
                e.push(key("upstream"), format!("no upstream named {u:?}"));
                continue;
            }
            Some(u) => u.to_string(),
        };
        let host = r.host.as_deref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host
            && (h.is_empty() || h.contains(['/', ' ', ':']))
        {
            e.push(
                key("host"),
                format!("{h:?} must be a bare host name without port"),
            );
        }
        if r.media.is_some() && r.websocket == Some(false) {
            e.push(
                key("websocket"),
                "a route with [route.media] is a WebSocket route",
            );
        }
        if !seen_matches.insert((host.clone(), path_prefix.clone())) {
            e.push(
                key("path_prefix"),
                "another route has the same host and path_prefix",
            );
        }
        routes.push(RouteConfig {
            name,
            host,
            path_prefix,
            upstream,
            preserve_host: r.preserve_host.unwrap_or(true),
            max_body_bytes: r.max_body_bytes.unwrap_or(if r.webhook.is_some() {
                d::WEBHOOK_MAX_BODY_BYTES
            } else {
                d::MAX_BODY_BYTES
            }),
            websocket: r.websocket.unwrap_or(false) || r.media.is_some(),
            websocket_idle_timeout: e.duration(
                &key("websocket_idle_timeout"),
                r.websocket_idle_timeout.as_deref(),
                d::WEBSOCKET_IDLE_TIMEOUT,
            ),
            websocket_max_message_bytes: e.positive(
                &key("websocket_max_message_bytes"),
                r.websocket_max_message_bytes,
                d::WEBSOCKET_MAX_MESSAGE_BYTES,
            ) as usize,
            websocket_write_timeout: e.duration(
                &key("websocket_write_timeout"),
                r.websocket_write_timeout.as_deref(),
                d::WEBSOCKET_WRITE_TIMEOUT,
            ),
            websocket_allowed_origins: origins(
                &mut e,
                &key("websocket_allowed_origins"),
                r.websocket_allowed_origins.as_deref(),
            ),
            allow: e.nets(&key("allow"), r.allow.as_ref()),
            deny: e.nets(&key("deny"), r.deny.as_ref()),
            rate_limit: r
                .rate_limit
                .as_ref()
                .and_then(|rl| rate_limit(&mut e, &key("rate_limit"), rl)),
            max_websocket_sessions_per_ip: r.max_websocket_sessions_per_ip.map(|v| {
                e.positive(&key("max_websocket_sessions_per_ip"), Some(u64::from(v)), 1) as u32
            }),
            webhook: r
                .webhook
                .as_ref()
                .and_then(|w| webhook::validate(&mut e, &key("webhook"), w, env)),
            media: r
                .media
                .as_ref()
                .and_then(|m| media::validate(&mut e, &key("media"), m)),
        });
    }

    let mut rules = Vec::new();
    for (i, r) in f.bans.rule.iter().enumerate() {
        let key = |k: &str| format!("bans.rule[{i}].{k}");
        let name = r.name.clone().unwrap_or_else(|| format!("rule{i}"));
        if rules.iter().any(|x: &BanRule| x.name == name) {
            e.push(key("name"), format!("duplicate rule name {name:?}"));
        }
        let Some(on) = e.offence(&key("on"), r.on.as_deref()) else {
            continue;
        };
        if r.window.is_none() || r.duration.is_none() || r.count.is_none() {
            e.push(
                format!("bans.rule[{i}]"),
                "count, window and duration are required",
            );
            continue;
        }
        rules.push(BanRule {
            name,
            on,
            count: e.positive(&key("count"), r.count.map(u64::from), 1) as u32,
            window: e.duration(&key("window"), r.window.as_deref(), Duration::from_secs(60)),
            duration: e.duration(
                &key("duration"),
                r.duration.as_deref(),
                Duration::from_secs(60),
            ),
        });
    }
    let ban_prefix = f.bans.ipv6_prefix.unwrap_or(d::RATE_LIMIT_IPV6_PREFIX);
    if ban_prefix > 128 {
        e.push("bans.ipv6_prefix", "must be 0..=128");
    }
    let bans = BansConfig {
        max_entries: e.positive("bans.max_entries", f.bans.max_entries, d::BANS_MAX_ENTRIES)
            as usize,
        ipv6_prefix: ban_prefix,
        exempt: e.nets("bans.exempt", f.bans.exempt.as_ref()),
        rules,
    };

    let mut tokens = Vec::new();
    for (i, t) in f.admin.token.iter().enumerate() {
        let key = |k: &str| format!("admin.token[{i}].{k}");
        let name = match t.name.clone().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => {
                e.push(key("name"), "required");
                continue;
            }
        };
        let role = match t.role.as_deref() {
            Some("admin") => Role::Admin,
            Some("operator") => Role::Operator,
            Some("auditor") => Role::Auditor,
            other => {
                e.push(
                    key("role"),
                    format!("{other:?} is not one of \"admin\", \"operator\", \"auditor\""),
                );
                continue;
            }
        };
        let Some(hash) = t
            .sha256
            .as_deref()
            .and_then(|h| crate::admission::signature::encoding::hex_exact(h, 32).ok())
        else {
            e.push(
                key("sha256"),
                "required: 64 hex digits, the SHA-256 of the token (`printf %s TOKEN | sha256sum`)",
            );
            continue;
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&hash);
        tokens.push(AdminToken { name, role, sha256 });
    }
    let recording = recording::recording(&mut e, &f.recording, &server.data_dir, env);
    let keys = recording::keys(&mut e, &f.keys, env);
    let audit = audit::audit(&mut e, &f.audit, &server.data_dir, env);
    let mut alerts = Vec::new();
    for (i, a) in f.alerts.iter().enumerate() {
        let key = |k: &str| format!("alerts[{i}].{k}");
        let name = a.name.clone().unwrap_or_else(|| format!("alert{i}"));
        e.label_name(&key("name"), &name);
        let Some(on) = e.offence(&key("on"), a.on.as_deref()) else {
            continue;
        };
        let window = e.duration(
            &key("window"),
            a.window.as_deref(),
            Duration::from_secs(900),
        );
        let minutes = window.as_secs() / 60;
        if window.as_secs() % 60 != 0 || !(1..=1440).contains(&minutes) {
            e.push(key("window"), "whole minutes, from 1m to 24h");
        }
        alerts.push(AlertRule {
            name,
            on,
            threshold: e.positive(&key("threshold"), a.threshold.map(u64::from), 1) as u32,
            window_minutes: minutes.clamp(1, 1440) as u32,
        });
    }
    if e.0.is_empty() {
        Ok(Config {
            alerts,
            audit,
            recording,
            keys,
            bans,
            server,
            admin: AdminConfig {
                listen: admin_listen,
                tokens,
            },
            log: LogConfig { level, format },
            upstreams,
            routes,
        })
    } else {
        Err(e.0)
    }
}

fn rate_limit(e: &mut Errors, key: &str, f: &file::RateLimitFile) -> Option<RateLimitConfig> {
    let mut pair = |rate: Option<&str>, burst: Option<u32>, rate_key: &str, burst_key: &str| {
        let rate: Rate = match rate?.parse() {
            Ok(r) => r,
            Err(reason) => {
                e.push(format!("{key}.{rate_key}"), reason);
                return None;
            }
        };
        let burst = match burst {
            None => rate.count,
            Some(b) => match std::num::NonZeroU32::new(b) {
                Some(b) => b,
                None => {
                    e.push(format!("{key}.{burst_key}"), "must be greater than zero");
                    return None;
                }
            },
        };
        Some((rate, burst))
    };
    let per_ip = pair(f.per_ip.as_deref(), f.burst, "per_ip", "burst");
    let total = pair(f.total.as_deref(), f.total_burst, "total", "total_burst");
    let ipv6_prefix = f.ipv6_prefix.unwrap_or(defaults::RATE_LIMIT_IPV6_PREFIX);
    if ipv6_prefix > 128 {
        e.push(format!("{key}.ipv6_prefix"), "must be 0..=128");
    }
    let max_keys = e.positive(
        &format!("{key}.max_keys"),
        f.max_keys,
        defaults::RATE_LIMIT_MAX_KEYS,
    ) as usize;
    if per_ip.is_none() && total.is_none() {
        e.push(key.to_string(), "set per_ip, total or both");
        return None;
    }
    Some(RateLimitConfig {
        per_ip,
        total,
        ipv6_prefix,
        max_keys,
    })
}

/// Accepts the filters operators write (`info`, `warn,voxguard::access=info`) and refuses span and
/// field filters (`[span{field=value}]`): tracing compiles their values as regular expressions, and
/// a pathological one keeps `voxguard check` and start-up busy for seconds.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s));
    let is_target = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            // A bare target is valid for tracing but is almost always a mistyped level that
            // would silence every other target.
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "{directive:?} is not a level (trace, debug, info, warn, error, off) or target=level; \
                 span and field filters are not supported"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|err| format!("invalid filter: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, "t.toml", &no_env) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "t", &no_env).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
        assert_eq!(c.server.grace_period, Duration::from_secs(30));
    }

    #[test]
    fn log_level_takes_levels_and_targets_but_not_span_or_field_filters() {
        for ok in [
            "info",
            "WARN",
            "warn,voxguard::access=info",
            "hyper=off, info",
        ] {
            let c = Config::parse(&format!("[log]\nlevel = {ok:?}\n"), "t", &no_env);
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        // The first is the input the config fuzzer found taking seconds inside the filter parser.
        for bad in [
            "ifff[2_9_28h2_9180_2ff-={N=3333332829f........fPPPPPPPPPPPPPPPPf={N-{=},N={}l82_.3.",
            "[call{caller=.*}]=debug",
            "loud",
            "voxguard",
            "voxguard=verbose",
        ] {
            let errs = errors(&format!("[log]\nlevel = {bad:?}\n"));
            assert!(
                errs.iter().any(|e| e.starts_with("log.level: ")
                    && e.contains("span and field filters are not supported")),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu_and_must_be_1_to_1024() {
        let auto = Config::parse("", "t", &no_env).unwrap();
        assert_eq!(auto.server.worker_threads, None);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(auto.server.threads(), cpus);
        let one = Config::parse("[server]\nworker_threads = 1\n", "t", &no_env).unwrap();
        assert_eq!(
            (one.server.worker_threads, one.server.threads()),
            (Some(1), 1)
        );
        for (bad, why) in [(0, "greater than zero"), (1025, "at most 1024")] {
            let errs = errors(&format!("[server]\nworker_threads = {bad}\n"));
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("server.worker_threads: ") && e.contains(why)),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn reports_every_bad_key_at_once() {
        let errs = errors(
            r#"
            [server]
            grace_period = "soon"
            [[upstream]]
            name = "voice"
            url = "ftp://x"
            [[route]]
            path_prefix = "/"
            upstream = "voic"
            "#,
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("server.grace_period: invalid duration")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("upstream[0].url:")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e == "route[0].upstream: no upstream named \"voic\""),
            "{errs:?}"
        );
    }

    #[test]
    fn a_response_timeout_not_longer_than_connect_timeout_is_refused() {
        let upstream = |connect: &str, response: &str| {
            format!(
                "[[upstream]]\nname = \"voice\"\nurl = \"http://127.0.0.1:8080\"\n\
                 connect_timeout = {connect:?}\nresponse_timeout = {response:?}\n"
            )
        };
        for (connect, response) in [("1s", "1s"), ("2s", "1s")] {
            let errs = errors(&upstream(connect, response));
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("upstream[0].response_timeout: ")
                        && e.contains(&format!("longer than connect_timeout ({connect})"))),
                "{connect} / {response}: {errs:?}"
            );
        }
        assert!(Config::parse(&upstream("1s", "1100ms"), "t", &no_env).is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[server]\nlistn = \"x\"\n", "t", &no_env).unwrap_err();
        assert!(err.to_string().contains("unknown field `listn`"), "{err}");
    }

    #[test]
    fn ip_lists_parse_cidrs_and_bare_addresses() {
        let c = Config::parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"192.0.2.7/24\"]\n",
            "t",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies[1].to_string(), "::1/128");
        assert_eq!(
            c.server.deny[0].to_string(),
            "192.0.2.0/24",
            "host bits are cleared"
        );
        let errs = errors("[server]\nallow = [\"10.0.0.0/33\"]\n");
        assert_eq!(
            errs,
            vec!["server.allow[0]: \"10.0.0.0/33\" is not an IP address or CIDR"]
        );
    }

    #[test]
    fn rate_limits_parse_with_defaults_and_name_bad_keys() {
        let base =
            "[[upstream]]\nname=\"a\"\nurl=\"http://127.0.0.1:1\"\n[[route]]\nupstream=\"a\"\n";
        let c = Config::parse(
            &format!("{base}rate_limit = {{ per_ip = \"20/s\", burst = 40 }}\n"),
            "t",
            &no_env,
        )
        .unwrap();
        let rl = c.routes[0].rate_limit.unwrap();
        assert_eq!(rl.per_ip.unwrap().1.get(), 40);
        assert_eq!(rl.ipv6_prefix, 64);
        let errs = errors(&format!(
            "{base}rate_limit = {{ per_ip = \"20/d\", burst = 0 }}\n"
        ));
        assert!(
            errs[0].starts_with("route[0].rate_limit.per_ip:"),
            "{errs:?}"
        );
    }

    #[test]
    fn websocket_origins_are_exact_browser_origins() {
        let base =
            "[[upstream]]\nname=\"a\"\nurl=\"http://127.0.0.1:1\"\n[[route]]\nupstream=\"a\"\n";
        let c = Config::parse(
            &format!("{base}websocket_allowed_origins = [\"https://App.Example\", \"http://127.0.0.1:3000\", \"null\"]\n"),
            "t",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            c.routes[0].websocket_allowed_origins,
            ["https://app.example", "http://127.0.0.1:3000", "null"]
        );
        let errs = errors(&format!(
            "{base}websocket_allowed_origins = [\"https://a.example\", \"https://a.example/\", \"a.example\", \"wss://a.example\", \"https://a.example/x\"]\n"
        ));
        let keys: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [1, 2, 3, 4].map(|i| format!("route[0].websocket_allowed_origins[{i}]")),
            "{errs:?}"
        );
    }

    #[test]
    fn ban_rules_parse_and_name_bad_keys() {
        let c = Config::parse(
            "[[bans.rule]]\nname = \"sig\"\non = \"signature_failure\"\ncount = 5\nwindow = \"15m\"\nduration = \"1h\"\n",
            "t",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.bans.rules[0].duration, Duration::from_secs(3600));
        let errs = errors(
            "[[bans.rule]]\non = \"sneezing\"\ncount = 5\nwindow = \"1m\"\nduration = \"1m\"\n",
        );
        assert!(errs[0].starts_with("bans.rule[0].on:"), "{errs:?}");
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| (k == defaults::ENV_LISTEN).then(|| "127.0.0.1:1234".to_string());
        let c = Config::parse("[server]\nlisten = \"127.0.0.1:9\"\n", "t", &env).unwrap();
        assert_eq!(c.server.listen.port(), 1234);
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let env = |k: &str| (k == defaults::ENV_ADMIN_LISTEN).then(|| "nope".to_string());
        let err = Config::parse("", "t", &env).unwrap_err().to_string();
        assert!(
            err.contains("VOXGUARD_ADMIN_LISTEN: invalid socket address"),
            "{err}"
        );
    }
}
