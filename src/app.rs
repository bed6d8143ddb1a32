//! Wiring only: builds the components from a [`Config`], binds the listeners, spawns the tasks,
//! and returns the bound addresses. No request logic lives here.

use crate::audit::log::{AuditLog, Event as AuditEvent, Settings as AuditSettings};
use crate::recording::writer::FileSink;
use crate::ws::record::RecordingSink;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission::ban::{BanList, Offence};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::conn::HttpSettings;
use crate::net::listener::{self, TlsListenerSettings};
use crate::net::tls::{self, ReloadingResolver, TlsError};
use crate::pipeline::{Pipeline, Runtime};
use crate::proxy::upstream::UpstreamError;
use crate::shutdown::Drain;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("recording: {0}")]
    Recording(String),
    /// The audit log cannot be kept (the message names `audit.dir` or the key at fault).
    #[error("audit: {0}")]
    Audit(String),
    #[error("{key} {addr}: cannot listen: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where the running proxy listens, and which certificate it serves (for tests and the log).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    pub redirect: Option<SocketAddr>,
    pub cert_file: PathBuf,
}

/// A running proxy.
pub struct App {
    pub addrs: BoundAddrs,
    pub metrics: Metrics,
    pipeline: Arc<Pipeline>,
    drain: Drain,
    background: CancellationToken,
    grace: std::time::Duration,
    /// Where media routes with `record = true` write their encrypted recordings.
    pub recordings: Arc<FileSink>,
    admin_api: Arc<crate::admin::api::AdminContext>,
}

/// After the drain, how long the recordings of the calls it ended get to write their last chunk,
/// sync it and mark their keystore entries (past the grace period: the calls are already over).
const RECORDINGS_FINISH: std::time::Duration = std::time::Duration::from_secs(10);

async fn sweep_recordings(sink: Arc<FileSink>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::config::defaults::RECORDING_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                // SQLite and file deletes block: on the blocking pool, never a calls' thread.
                let keystore = sink.keystore.clone();
                let n = tokio::task::spawn_blocking(move || {
                    crate::recording::sweep_expired(&keystore, now)
                })
                .await
                .unwrap_or(0);
                sink.metrics.retention_deleted.inc_by(n as u64);
                if n > 0 && let Some(audit) = sink.audit.get() {
                    audit.record(AuditEvent::new("recordings_expired", "ok", serde_json::json!({"count": n})));
                }
            }
        }
    }
}

async fn sweep_limiters(pipeline: Arc<Pipeline>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::config::defaults::RATE_LIMIT_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => pipeline.sweep_limiters(),
        }
    }
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    crate::net::listener::bind(addr).map_err(|source| StartError::Bind { key, addr, source })
}

impl App {
    /// Binds everything and starts serving. Fails before accepting anything if a part is broken.
    pub async fn start(config: &Config) -> Result<App, StartError> {
        let metrics = Metrics::new();
        let drain = Drain::new();
        let background = CancellationToken::new();

        let source = tls::cert_source(&config.server.tls, &config.server.data_dir)?;
        let initial = tls::load_certified_key(&source.cert, &source.key)?;
        tls::publish_not_after(&initial, &metrics.net);
        let resolver = ReloadingResolver::new(initial);
        let acceptor = TlsAcceptor::from(tls::server_config(&config.server.tls, resolver.clone())?);
        tokio::spawn(resolver.watch(
            source.clone(),
            config.server.tls.reload_interval,
            metrics.net.clone(),
            background.clone(),
        ));

        let (audit_key, audit_seed) = crate::audit::keys(config).map_err(StartError::Recording)?;
        let _ = std::fs::write(
            config.server.data_dir.join("audit-signing.pub"),
            crate::audit::public_key(&audit_seed),
        );
        let audit = AuditLog::start(
            AuditSettings {
                dir: config.audit.dir.clone(),
                checkpoint_every: config.audit.checkpoint_every,
                checkpoint_interval: config.audit.checkpoint_interval,
                max_file_bytes: config.audit.max_file_bytes,
                queue: crate::audit::log::QUEUE,
            },
            *audit_key.expose(),
            *audit_seed.expose(),
            metrics.audit_dropped.clone(),
        )
        .map_err(StartError::Audit)?;
        audit.record(AuditEvent::new(
            "start",
            "ok",
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "config_sha256": crate::audit::config_digest(config)}),
        ));
        let recordings = FileSink::new(
            config.recording.clone(),
            crate::recording::key_ring(config).map_err(StartError::Recording)?,
            crate::recording::subject_key(config).map_err(StartError::Recording)?,
            metrics.recording.clone(),
        )
        .map_err(StartError::Recording)?;
        let _ = recordings.audit.set(audit.clone());
        let sink: Arc<dyn RecordingSink> = Arc::new(recordings.clone());
        tokio::spawn(sweep_recordings(recordings.clone(), background.clone()));
        let bans = BanList::with_system_clock(
            config.bans.rules.clone(),
            config.bans.max_entries,
            config.bans.ipv6_prefix,
        );
        bans.set_exempt(config.bans.exempt.clone());
        let audit_with_key = (audit.clone(), audit_key.clone());
        let pipeline = Pipeline::new(
            Runtime::build(config, None, &sink, &metrics, Some(&audit_with_key))?,
            bans,
            metrics.clone(),
            drain.clone(),
            Some(audit_with_key),
            crate::alerts::Alerts::new(
                &config.alerts,
                metrics.alert_events.clone(),
                metrics.alert_firing.clone(),
            ),
        );
        tokio::spawn(sweep_limiters(pipeline.clone(), background.clone()));
        let tls_listener = bind("server.listen", config.server.listen)?;
        let admin_listener = bind("admin.listen", config.admin.listen)?;
        let redirect_listener = match config.server.http_redirect_listen {
            Some(addr) => Some(bind("server.http_redirect_listen", addr)?),
            None => None,
        };
        let addrs = BoundAddrs {
            tls: tls_listener
                .local_addr()
                .expect("bound socket has an address"),
            admin: admin_listener
                .local_addr()
                .expect("bound socket has an address"),
            redirect: redirect_listener
                .as_ref()
                .map(|l| l.local_addr().expect("bound socket has an address")),
            cert_file: source.cert.clone(),
        };

        let s = &config.server;
        let http = HttpSettings {
            header_read_timeout: s.header_read_timeout,
            keepalive_timeout: s.keepalive_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
        };
        tokio::spawn(listener::run_tls(
            tls_listener,
            acceptor,
            pipeline.clone(),
            TlsListenerSettings {
                http,
                handshake_timeout: s.tls.handshake_timeout,
                max_connections: s.max_connections,
                max_connections_per_ip: s.max_connections_per_ip,
                proxy_protocol: s.proxy_protocol,
            },
        ));
        if let Some(l) = redirect_listener {
            tokio::spawn(listener::run_redirect(
                l,
                addrs.tls.port(),
                http,
                drain.clone(),
            ));
        }
        let admin_api = Arc::new(crate::admin::api::AdminContext {
            tokens: arc_swap::ArcSwap::from_pointee(config.admin.tokens.clone()),
            pipeline: pipeline.clone(),
            recordings: recordings.clone(),
            reload: Arc::new(tokio::sync::Notify::new()),
            audit_dir: config.audit.dir.clone(),
            audit_public_key: crate::audit::public_key_bytes(&audit_seed),
        });
        tokio::spawn(crate::admin::run(
            admin_listener,
            metrics.clone(),
            drain.clone(),
            admin_api.clone(),
            background.clone(),
        ));
        let runtime = tokio::runtime::Handle::current();
        let worker_threads = runtime.metrics().num_workers();
        let scheduler = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
            _ => "multi-threaded",
        };
        tracing::info!(listen = %addrs.tls, admin = %addrs.admin, routes = config.routes.len(), worker_threads, scheduler, "voxguard started");
        Ok(App {
            addrs,
            metrics,
            pipeline,
            drain,
            background,
            grace: config.server.grace_period,
            recordings,
            admin_api,
        })
    }

    /// Replaces routes, upstreams and per-route limits; live connections keep running. Listener
    /// addresses, TLS files and server-level limits take effect on restart only.
    pub fn reload(&self, config: &Config) -> Result<(), UpstreamError> {
        let sink: Arc<dyn RecordingSink> = Arc::new(self.recordings.clone());
        // A new active KEK takes effect for recordings started from now on.
        if let Ok(ring) = crate::recording::key_ring(config) {
            self.recordings.ring.store(Arc::new(ring));
        }
        let runtime = Runtime::build(
            config,
            Some(&self.pipeline.runtime.load()),
            &sink,
            &self.pipeline.metrics,
            self.pipeline.audit.as_ref(),
        )?;
        self.pipeline.runtime.store(Arc::new(runtime));
        self.pipeline.bans.set_rules(config.bans.rules.clone());
        self.pipeline.bans.set_exempt(config.bans.exempt.clone());
        self.admin_api
            .tokens
            .store(Arc::new(config.admin.tokens.clone()));
        if let Some((audit, _)) = &self.pipeline.audit {
            audit.record(AuditEvent::new(
                "config_applied",
                "ok",
                serde_json::json!({"config_sha256": crate::audit::config_digest(config), "active_kek": self.recordings.ring.load().active_id()}),
            ));
        }
        Ok(())
    }

    /// Resolves when the admin API asks for a reload (`POST /admin/reload`), as SIGHUP does.
    pub fn reload_requested(&self) -> Arc<tokio::sync::Notify> {
        self.admin_api.reload.clone()
    }

    /// The hook for checks outside the pipeline (webhook signatures) to feed the ban rules.
    pub fn record_offence(&self, offence: Offence, client: std::net::IpAddr) {
        self.pipeline.record_offence(offence, client);
    }

    /// Counts a reload attempt.
    pub fn record_reload(&self, ok: bool) {
        if let Some((audit, _)) = &self.pipeline.audit {
            audit.record(AuditEvent::new(
                "config_reload",
                if ok { "ok" } else { "error" },
                serde_json::json!({}),
            ));
        }
        self.metrics
            .config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Drains (see `shutdown`), waits for the recordings of the calls it ended, then stops the admin
    /// listener and background tasks. The audit log closes last: recordings audit their end.
    pub async fn shutdown(self) -> bool {
        let drained = self.drain.run(self.grace).await;
        let unfinished = self.recordings.finish_writers(RECORDINGS_FINISH).await;
        let clean = drained && unfinished == 0;
        self.pipeline.flush_refusals(true);
        if let Some((audit, _)) = &self.pipeline.audit {
            audit.close().await;
        }
        self.background.cancel();
        clean
    }
}
