//! Prometheus metrics on an explicit registry, one struct per area. Labels are routes, reasons,
//! directions and status classes only — never an address, a path or an id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub const HTTP_REQUESTS: &str = "voxguard_http_requests_total";
pub const HTTP_DURATION: &str = "voxguard_http_request_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "voxguard_upstream_errors_total";
pub const HTTP_MALFORMED: &str = "voxguard_http_malformed_requests_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "voxguard_tls_handshake_failures_total";
pub const TLS_CERT_RELOADS: &str = "voxguard_tls_certificate_reloads_total";
pub const TLS_CERT_NOT_AFTER: &str = "voxguard_tls_certificate_not_after_seconds";
pub const ACTIVE_CONNECTIONS: &str = "voxguard_active_connections";
pub const CONNECTIONS_REJECTED: &str = "voxguard_connections_rejected_total";
pub const WS_ACTIVE: &str = "voxguard_websocket_sessions_active";
pub const WS_MESSAGES: &str = "voxguard_websocket_messages_total";
pub const CONFIG_RELOADS: &str = "voxguard_config_reloads_total";
pub const ADMISSION_REFUSALS: &str = "voxguard_admission_refusals_total";
pub const FORWARDED_FOR_MALFORMED: &str = "voxguard_forwarded_for_malformed_total";
pub const RATE_LIMITED: &str = "voxguard_rate_limited_total";
pub const BANS_ACTIVE: &str = "voxguard_bans_active";
pub const BANS: &str = "voxguard_bans_total";
pub const RATE_LIMIT_KEYS: &str = "voxguard_rate_limit_tracked_keys";
pub const RATE_LIMIT_EVICTIONS: &str = "voxguard_rate_limit_evictions_total";
pub const MEDIA_MESSAGES: &str = "voxguard_media_messages_total";
pub const MEDIA_REDACTIONS: &str = "voxguard_media_redactions_total";
pub const MEDIA_MALFORMED: &str = "voxguard_media_malformed_total";
pub const MEDIA_PROCESSING: &str = "voxguard_media_message_processing_seconds";
pub const MEDIA_SESSION_DURATION: &str = "voxguard_media_session_duration_seconds";
pub const MEDIA_RECORDING_DROPPED: &str = "voxguard_media_recording_dropped_total";
pub const RECORDINGS_STARTED: &str = "voxguard_recordings_started_total";
pub const RECORDINGS_FINISHED: &str = "voxguard_recordings_finished_total";
pub const RECORDINGS_FAILED: &str = "voxguard_recordings_failed_total";
pub const RECORDING_BYTES: &str = "voxguard_recording_bytes_written_total";
pub const RECORDING_CHUNKS: &str = "voxguard_recording_chunks_sealed_total";
pub const RECORDINGS_NOT_CONSENTED: &str = "voxguard_recordings_not_consented_total";
pub const RECORDINGS_RETENTION_DELETED: &str = "voxguard_recordings_retention_deleted_total";
pub const AUDIT_DROPPED: &str = "voxguard_audit_dropped_total";
pub const LOG_LINES_DROPPED: &str = "voxguard_log_lines_dropped_total";
pub const ALERT_EVENTS: &str = "voxguard_alert_events";
pub const ALERT_FIRING: &str = "voxguard_alert_firing";
pub const WEBHOOK_VERIFIED: &str = "voxguard_webhook_verified_total";
pub const WEBHOOK_FAILURES: &str = "voxguard_webhook_signature_failures_total";
pub const WEBHOOK_REPLAY_IDS: &str = "voxguard_webhook_replay_ids";
pub const WEBHOOK_REPLAY_EVICTIONS: &str = "voxguard_webhook_replay_evictions_total";

/// Every metric the proxy exports, cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub net: NetMetrics,
    pub ws: WsMetrics,
    pub admission: AdmissionMetrics,
    pub webhook: WebhookMetrics,
    pub media: MediaMetrics,
    pub recording: RecordingMetrics,
    /// `outcome` = ok | error.
    pub config_reloads: IntCounterVec,
    /// Audit events lost: the writer's queue was full or a write failed (each is also reported in the log).
    pub audit_dropped: prometheus::IntCounter,
    /// Labels: alert. Offences in the alert's window, and 1 when that reached its threshold.
    pub alert_events: prometheus::IntGaugeVec,
    pub alert_firing: prometheus::IntGaugeVec,
}

#[derive(Clone)]
pub struct HttpMetrics {
    /// Labels: route, status class (`2xx`…`5xx`).
    pub requests: IntCounterVec,
    /// Labels: route. From request start to the end of the response body.
    pub duration: HistogramVec,
    /// Labels: upstream, reason (connect, timeout, protocol, body_too_large).
    pub upstream_errors: IntCounterVec,
    /// Labels: reason (malformed, head_too_large, header_timeout, incomplete, h2_protocol, h2_flood, other:
    /// refused by hyper's parser or connection; bad_host, bad_body: refused by the pipeline).
    pub malformed: IntCounterVec,
}

#[derive(Clone)]
pub struct NetMetrics {
    /// Labels: reason (timeout, protocol_version, no_shared_cipher, bad_certificate, eof, other).
    pub tls_handshake_failures: IntCounterVec,
    /// Labels: outcome (ok, error).
    pub tls_cert_reloads: IntCounterVec,
    /// The served certificate's notAfter (Unix seconds), for expiry alerts.
    pub tls_cert_not_after: IntGauge,
    pub active_connections: IntGauge,
    /// Labels: reason (max_connections, draining).
    pub connections_rejected: IntCounterVec,
}

#[derive(Clone)]
pub struct AdmissionMetrics {
    /// Labels: reason (deny_list, not_allowed), route (`_accept` for the global list at accept).
    pub refusals: IntCounterVec,
    /// `X-Forwarded-For` from a trusted proxy that did not parse (the TCP peer was used instead).
    pub malformed_forwarded_for: prometheus::IntCounter,
    /// Labels: route, scope (per_ip, total).
    pub rate_limited: IntCounterVec,
    /// Labels: route. Client keys held by the route's per-IP limiter (updated by the sweep).
    pub tracked_keys: prometheus::IntGaugeVec,
    /// Labels: route. Keys evicted because the limiter was at `max_keys`.
    pub evictions: IntCounterVec,
    pub bans_active: IntGauge,
    /// Labels: rule. Bans imposed.
    pub bans: IntCounterVec,
}

#[derive(Clone)]
pub struct RecordingMetrics {
    pub started: prometheus::IntCounter,
    pub finished: prometheus::IntCounter,
    pub failed: prometheus::IntCounter,
    pub bytes: prometheus::IntCounter,
    pub chunks: prometheus::IntCounter,
    /// Labels: route. Calls not recorded because consent was required and not given.
    pub not_consented: IntCounterVec,
    pub retention_deleted: prometheus::IntCounter,
}

#[derive(Clone)]
pub struct MediaMetrics {
    /// Labels: route, direction (to_backend, to_caller), kind (media, start, dtmf, mark, …).
    pub messages: IntCounterVec,
    /// Labels: route, kind (card, ssn, phone, email, pattern, dtmf_event, dtmf_tone, paused_frame).
    pub redactions: IntCounterVec,
    /// Labels: route, reason (json, field, base64, partial_sample, unexpected_binary).
    pub malformed: IntCounterVec,
    /// Labels: route. Decode → redactors → encode, per message.
    pub processing: HistogramVec,
    /// Labels: route.
    pub session_duration: HistogramVec,
    /// Labels: route. Recorded events dropped because the recorder's queue was full.
    pub recording_dropped: IntCounterVec,
}

#[derive(Clone)]
pub struct WebhookMetrics {
    /// Labels: route, scheme.
    pub verified: IntCounterVec,
    /// Labels: route, scheme, reason (missing, malformed, mismatch, stale, replayed).
    pub failures: IntCounterVec,
    /// Labels: route. Delivery ids held by the replay cache (updated by the sweep).
    pub replay_ids: prometheus::IntGaugeVec,
    /// Labels: route. Ids dropped before their window ended because the cache was full.
    pub replay_evictions: IntCounterVec,
}

#[derive(Clone)]
pub struct WsMetrics {
    pub active: IntGauge,
    /// Labels: route, direction (client_to_upstream, upstream_to_client).
    pub messages: IntCounterVec,
}

impl Metrics {
    /// Builds and registers every metric. Registration cannot fail for these fixed, unique names.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                prometheus::IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["route"])
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let plain = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        // The process's one logger counts into a static; each registry shows it.
        registry
            .register(Box::new(crate::logging::LINES_DROPPED.clone()))
            .expect("unique metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_DURATION,
                "Request duration until the response body ends.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        Metrics {
            http: HttpMetrics {
                requests: counter(
                    HTTP_REQUESTS,
                    "Requests by route and status class.",
                    &["route", "status"],
                ),
                duration,
                upstream_errors: counter(
                    UPSTREAM_ERRORS,
                    "Upstream failures by reason.",
                    &["upstream", "reason"],
                ),
                malformed: counter(
                    HTTP_MALFORMED,
                    "Client requests or connections refused as malformed, by reason.",
                    &["reason"],
                ),
            },
            net: NetMetrics {
                tls_handshake_failures: counter(
                    TLS_HANDSHAKE_FAILURES,
                    "Failed TLS handshakes by reason.",
                    &["reason"],
                ),
                tls_cert_reloads: counter(
                    TLS_CERT_RELOADS,
                    "Certificate reload attempts.",
                    &["outcome"],
                ),
                active_connections: gauge(ACTIVE_CONNECTIONS, "Open client connections."),
                tls_cert_not_after: gauge(
                    TLS_CERT_NOT_AFTER,
                    "The served certificate's notAfter, Unix seconds.",
                ),
                connections_rejected: counter(
                    CONNECTIONS_REJECTED,
                    "Client connections refused before proxying, by reason.",
                    &["reason"],
                ),
            },
            ws: WsMetrics {
                active: gauge(WS_ACTIVE, "Open WebSocket sessions."),
                messages: counter(
                    WS_MESSAGES,
                    "WebSocket messages relayed.",
                    &["route", "direction"],
                ),
            },
            admission: AdmissionMetrics {
                refusals: counter(
                    ADMISSION_REFUSALS,
                    "Requests or connections refused by admission, by reason and route.",
                    &["reason", "route"],
                ),
                malformed_forwarded_for: {
                    let c = prometheus::IntCounter::new(
                        FORWARDED_FOR_MALFORMED,
                        "X-Forwarded-For from a trusted proxy that did not parse.",
                    )
                    .expect("valid metric");
                    registry
                        .register(Box::new(c.clone()))
                        .expect("unique metric");
                    c
                },
                rate_limited: counter(
                    RATE_LIMITED,
                    "Requests refused with 429, by route and scope.",
                    &["route", "scope"],
                ),
                tracked_keys: {
                    let g = prometheus::IntGaugeVec::new(
                        Opts::new(
                            RATE_LIMIT_KEYS,
                            "Client keys tracked by the per-IP limiter.",
                        ),
                        &["route"],
                    )
                    .expect("valid metric");
                    registry
                        .register(Box::new(g.clone()))
                        .expect("unique metric");
                    g
                },
                evictions: counter(
                    RATE_LIMIT_EVICTIONS,
                    "Limiter keys evicted because the limiter was full.",
                    &["route"],
                ),
                bans_active: gauge(BANS_ACTIVE, "Client keys banned right now."),
                bans: counter(BANS, "Temporary bans imposed, by rule.", &["rule"]),
            },
            media: MediaMetrics {
                messages: counter(
                    MEDIA_MESSAGES,
                    "Media stream messages decoded, by route, direction and kind.",
                    &["route", "direction", "kind"],
                ),
                redactions: counter(
                    MEDIA_REDACTIONS,
                    "Things redacted from media streams, by route and kind.",
                    &["route", "kind"],
                ),
                malformed: counter(
                    MEDIA_MALFORMED,
                    "Media messages that could not be decoded (never forwarded as is), by route and reason.",
                    &["route", "reason"],
                ),
                processing: histogram(
                    MEDIA_PROCESSING,
                    "Time to decode, redact and encode one media message.",
                    vec![
                        1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
                    ],
                ),
                session_duration: histogram(
                    MEDIA_SESSION_DURATION,
                    "Media session lengths.",
                    vec![1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
                ),
                recording_dropped: counter(
                    MEDIA_RECORDING_DROPPED,
                    "Recorded events dropped because the recorder could not keep up.",
                    &["route"],
                ),
            },
            recording: RecordingMetrics {
                started: plain(RECORDINGS_STARTED, "Recordings started."),
                finished: plain(RECORDINGS_FINISHED, "Recordings closed complete."),
                failed: plain(
                    RECORDINGS_FAILED,
                    "Recordings that failed (the call went on unless on_error = close).",
                ),
                bytes: plain(
                    RECORDING_BYTES,
                    "Encrypted bytes written to recording files.",
                ),
                chunks: plain(RECORDING_CHUNKS, "Chunks sealed."),
                not_consented: counter(
                    RECORDINGS_NOT_CONSENTED,
                    "Calls not recorded because consent was required and not given.",
                    &["route"],
                ),
                retention_deleted: plain(
                    RECORDINGS_RETENTION_DELETED,
                    "Recordings deleted at the end of their retention.",
                ),
            },
            webhook: WebhookMetrics {
                verified: counter(
                    WEBHOOK_VERIFIED,
                    "Webhook requests whose signature verified, by route and scheme.",
                    &["route", "scheme"],
                ),
                failures: counter(
                    WEBHOOK_FAILURES,
                    "Webhook requests refused (403, or 409 when replayed), by route, scheme and reason.",
                    &["route", "scheme", "reason"],
                ),
                replay_ids: gauge_vec(
                    WEBHOOK_REPLAY_IDS,
                    "Delivery ids remembered against replays.",
                    &["route"],
                ),
                replay_evictions: counter(
                    WEBHOOK_REPLAY_EVICTIONS,
                    "Delivery ids dropped early because the replay cache was full.",
                    &["route"],
                ),
            },
            config_reloads: counter(CONFIG_RELOADS, "Configuration reloads.", &["outcome"]),
            audit_dropped: plain(
                AUDIT_DROPPED,
                "Audit events lost (queue full or write failed); reported in the log.",
            ),
            alert_events: gauge_vec(ALERT_EVENTS, "Offences in the alert's window.", &["alert"]),
            alert_firing: gauge_vec(
                ALERT_FIRING,
                "1 when the alert's threshold is reached in its window.",
                &["alert"],
            ),
            registry,
        }
    }

    /// Prometheus text exposition of the whole registry.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `200` → `"2xx"`, without allocating.
/// A route's request counters (one per status class) and duration histogram, resolved once when
/// the runtime is built, so that a request pays no label lookup (a hash and a lock each).
pub struct RouteHttpMetrics {
    pub route: std::sync::Arc<str>,
    by_class: [prometheus::IntCounter; 5],
    duration: prometheus::Histogram,
}

impl RouteHttpMetrics {
    pub fn new(http: &HttpMetrics, route: &str) -> Self {
        Self {
            route: route.into(),
            by_class: STATUS_CLASSES.map(|c| http.requests.with_label_values(&[route, c])),
            duration: http.duration.with_label_values(&[route]),
        }
    }

    /// Counts a finished request under its status class and observes its duration.
    pub fn observe(&self, status: u16, elapsed: std::time::Duration) {
        self.by_class[status_class_index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The `status` label values, in `status_class_index` order.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
