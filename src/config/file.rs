//! The `proxy.toml` file as written: serde DTOs with `deny_unknown_fields`, every field optional so that
//! defaults live in one place (`defaults.rs`) and validation (`mod.rs`) can report every problem at once.

use serde::Deserialize;

/// The whole file. Unknown keys are a parse error that names the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub upstream: Vec<UpstreamFile>,
    #[serde(default)]
    pub route: Vec<RouteFile>,
    #[serde(default)]
    pub bans: BansFile,
    #[serde(default)]
    pub recording: RecordingFile,
    #[serde(default)]
    pub keys: KeysFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub alerts: Vec<AlertFile>,
}

/// `[[alerts]] name = "sig", on = "signature_failure", threshold = 50, window = "15m"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFile {
    pub name: Option<String>,
    pub on: Option<String>,
    pub threshold: Option<u32>,
    pub window: Option<String>,
}

/// `[audit] dir = "data/audit", key_env = "VOXGUARD_AUDIT_KEY"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub dir: Option<String>,
    pub key_env: Option<String>,
    pub key_file: Option<String>,
    pub signing_key_env: Option<String>,
    pub signing_key_file: Option<String>,
    pub checkpoint_every: Option<u64>,
    pub checkpoint_interval: Option<String>,
    pub max_file_bytes: Option<u64>,
}

/// `[recording] dir = "data/recordings", retention = "24h"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingFile {
    pub dir: Option<String>,
    pub retention: Option<String>,
    pub flush_interval: Option<String>,
    pub fsync: Option<String>,
    pub on_error: Option<String>,
    pub subject_key_env: Option<String>,
    pub subject_key_file: Option<String>,
}

/// `[keys] active = "k1"` and `[[keys.kek]] id = "k1", env = "VOXGUARD_KEK_K1"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub active: Option<String>,
    #[serde(default)]
    pub kek: Vec<KekFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekFile {
    pub id: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BansFile {
    pub max_entries: Option<u64>,
    pub ipv6_prefix: Option<u8>,
    pub exempt: Option<Vec<String>>,
    #[serde(default)]
    pub rule: Vec<BanRuleFile>,
}

/// `[[bans.rule]] on = "rate_limited", count = 20, window = "1m", duration = "10m"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRuleFile {
    pub name: Option<String>,
    pub on: Option<String>,
    pub count: Option<u32>,
    pub window: Option<String>,
    pub duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub grace_period: Option<String>,
    pub http_redirect_listen: Option<String>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub worker_threads: Option<u64>,
    pub proxy_protocol: Option<bool>,
    pub header_read_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub hsts: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    #[serde(default)]
    pub tls: TlsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub client_ca_file: Option<String>,
    pub handshake_timeout: Option<String>,
    pub reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
    #[serde(default)]
    pub token: Vec<AdminTokenFile>,
}

/// `[[admin.token]] name = "ops", role = "operator", sha256 = "<hex of SHA-256 of the token>"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenFile {
    pub name: Option<String>,
    pub role: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: Option<String>,
    pub url: Option<String>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: Option<String>,
    pub preserve_host: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub websocket: Option<bool>,
    pub websocket_idle_timeout: Option<String>,
    pub websocket_max_message_bytes: Option<u64>,
    pub websocket_allowed_origins: Option<Vec<String>>,
    pub websocket_write_timeout: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitFile>,
    pub max_websocket_sessions_per_ip: Option<u32>,
    pub webhook: Option<WebhookFile>,
    pub media: Option<MediaFile>,
}

/// `[route.media] protocol = "twilio"` and what to redact where.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    pub protocol: Option<String>,
    pub sample_rate: Option<u32>,
    pub record: Option<bool>,
    pub on_malformed: Option<String>,
    pub text: Option<String>,
    pub text_fields: Option<Vec<String>>,
    pub patterns: Option<Vec<String>>,
    pub dtmf_events: Option<String>,
    pub dtmf_tones: Option<String>,
    pub dtmf_lookahead_ms: Option<u64>,
    pub pause: Option<String>,
    pub pause_mark: Option<String>,
    pub resume_mark: Option<String>,
    pub pause_on_dtmf: Option<String>,
    pub max_pause: Option<String>,
    pub max_duration: Option<String>,
    pub max_sessions: Option<u32>,
    pub retention: Option<String>,
    pub consent_param: Option<String>,
    pub subject_param: Option<String>,
}

/// `secret_env = "A"` or `secret_env = ["A", "B"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[route.webhook] scheme = "twilio", secret_env = "TWILIO_AUTH_TOKEN", public_url = "https://…"`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub scheme: Option<String>,
    pub secret_env: Option<OneOrMany>,
    pub secret_file: Option<OneOrMany>,
    pub public_url: Option<String>,
    pub tolerance: Option<String>,
    pub replay: Option<bool>,
    pub replay_window: Option<String>,
    pub replay_max_entries: Option<u64>,
    pub body_timeout: Option<String>,
    pub header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub id_header: Option<String>,
}

/// `rate_limit = { per_ip = "20/s", burst = 40, total = "500/s", total_burst = 1000 }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub per_ip: Option<String>,
    pub burst: Option<u32>,
    pub total: Option<String>,
    pub total_burst: Option<u32>,
    pub ipv6_prefix: Option<u8>,
    pub max_keys: Option<u64>,
}
