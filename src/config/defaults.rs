//! Production defaults, one named constant each. The README's "Limits and timeouts" table lists them.

use std::time::Duration;

pub const LISTEN: &str = "127.0.0.1:8443";
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DATA_DIR: &str = "data";
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
pub const MAX_CONNECTIONS: u64 = 10_000;
/// Slowloris bound: the whole request head must arrive within this (hyper also uses it between requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed (HTTP/1.1 and h2).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request head size limit (request line + headers); larger heads get 431.
pub const MAX_HEADER_BYTES: u64 = 16 * 1024;
pub const MAX_HEADERS: u64 = 100;
pub const HSTS: &str = "max-age=31536000";
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest silence inside a response body (nginx's `proxy_read_timeout` is 60 s too).
pub const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Body cap on routes with `[route.webhook]` when `max_body_bytes` is not set: the body is buffered.
pub const WEBHOOK_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// How far a signed timestamp may be from now (Stripe's, Slack's and Standard Webhooks' own default).
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
/// How long accepted ids are remembered for schemes without a timestamp (twice the tolerance otherwise).
pub const WEBHOOK_REPLAY_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub const WEBHOOK_REPLAY_MAX_ENTRIES: u64 = 100_000;
/// A signed route's body must arrive within this (→ 408): it is buffered, so slow bodies hold memory.
pub const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded audio is held this long so a DTMF tone's onset can be silenced once it is confirmed
/// (the detector needs ~38 ms); 0 forwards at once and lets up to ~40 ms of each tone through.
pub const MEDIA_DTMF_LOOKAHEAD_MS: u64 = 40;
pub const MEDIA_PAUSE_MARK: &str = "voxguard:pause";
pub const MEDIA_RESUME_MARK: &str = "voxguard:resume";
/// A pause (mark or DTMF entry) never lasts longer than this at a stretch.
pub const MEDIA_MAX_PAUSE: Duration = Duration::from_secs(300);
/// A media session is closed (1001) after this long.
pub const MEDIA_MAX_DURATION: Duration = Duration::from_secs(3600);
/// Recordings (and their keystore entries) are deleted this long after they start.
pub const RECORDING_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Sealed chunks are written at least this often during a call.
pub const RECORDING_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired recordings are deleted.
pub const RECORDING_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const WEBSOCKET_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// A WebSocket side whose writes make no progress this long (it stopped reading) ends the session.
pub const WEBSOCKET_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const LOG_LEVEL: &str = "info";
/// IPv6 clients are rate-limited per /64: one subscriber usually holds a whole /64.
pub const RATE_LIMIT_IPV6_PREFIX: u8 = 64;
/// Most client addresses tracked per route limiter; past it, the least-loaded keys are evicted.
pub const RATE_LIMIT_MAX_KEYS: u64 = 100_000;
/// Most addresses tracked by the ban list (bans and offence counts each).
pub const BANS_MAX_ENTRIES: u64 = 100_000;
/// How often limiter keys whose bucket is full again are dropped.
pub const RATE_LIMIT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Environment variables that override the file (file < env).
pub const ENV_LISTEN: &str = "VOXGUARD_LISTEN";
pub const ENV_ADMIN_LISTEN: &str = "VOXGUARD_ADMIN_LISTEN";
pub const ENV_LOG_LEVEL: &str = "VOXGUARD_LOG_LEVEL";
pub const ENV_LOG_FORMAT: &str = "VOXGUARD_LOG_FORMAT";
