//! THE request path, in order: route → proxy | WebSocket → response hardening → access log.
//! Admission (allowlists, rate limits, signatures) slots in between routing and proxying.
//! This is the one place that records a request's outcome in metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::admission::ban::{BanList, Offence};
use crate::admission::client_ip::client_ip;
use crate::admission::conn_limit::{PerIpCounter, Slot};
use crate::admission::ip_allow::IpLists;
use crate::admission::rate_limit::RouteLimiter;
use crate::admission::signature::replay::Claim;
use crate::admission::signature::verifier::{self, WebhookVerifier};
use crate::admission::signature::{Failure, unix_now};
use crate::audit::log::{AuditLog, Event as AuditEvent};
use crate::config::{Config, RouteConfig};
use crate::metrics::{Metrics, RouteHttpMetrics};
use crate::net::conn::Activity;
use crate::proxy::body::{AccessRecord, ProxyBody, Tracked};
use crate::proxy::headers::{RequestIds, harden_response};
use crate::proxy::http::{ForwardCtx, forward};
use crate::proxy::upstream::{Upstream, UpstreamError};
use crate::respond::Rejection;
use crate::routing::RouteTable;
use crate::shutdown::Drain;
use crate::ws::intercept::MediaRoute;
use crate::ws::record::RecordingSink;
use crate::ws::session::{self, SessionSettings};

/// The key of a route-wide session counter.
const ROUTE_WIDE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Everything that SIGHUP can replace: routes, upstream pools, lists and per-request settings.
pub struct Runtime {
    pub routes: RouteTable,
    /// Beside `routes`, in its order: each route's upstream and request metrics, resolved once.
    route_state: Vec<RouteState>,
    /// Requests that matched no route.
    unrouted: Arc<RouteHttpMetrics>,
    pub upstreams: std::collections::HashMap<String, Arc<Upstream>>,
    pub hsts: Option<HeaderValue>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The global list, checked by the listener at accept (before TLS) against the TCP peer.
    pub accept_lists: IpLists,
    /// Per-route lists, only for routes that have one.
    route_lists: std::collections::HashMap<String, IpLists>,
    /// Per-route limiters, only for routes with `rate_limit`; kept across reloads while unchanged.
    pub limiters: std::collections::HashMap<String, Arc<RouteLimiter>>,
    /// Per-route WebSocket sessions per address; the live counts survive reloads.
    ws_sessions: std::collections::HashMap<String, Arc<PerIpCounter>>,
    /// Per-route signature verifiers, only for routes with `[route.webhook]`; replay caches are
    /// kept across reloads while unchanged.
    pub webhooks: std::collections::HashMap<String, Arc<WebhookVerifier>>,
    /// Route-wide media session caps (`[route.media] max_sessions`), one key per route; live
    /// counts survive reloads.
    media_sessions: std::collections::HashMap<String, Arc<PerIpCounter>>,
}

/// What a request on a route needs that can be looked up once per runtime, not once per request.
struct RouteState {
    upstream: Arc<Upstream>,
    http: Arc<RouteHttpMetrics>,
    /// The route's verifier when it is signed (the same one `Runtime::webhooks` keeps by name).
    webhook: Option<SignedRoute>,
    /// What each of the route's WebSocket sessions runs with, shared by them all.
    sessions: Arc<SessionSettings>,
}

/// A signed route's verifier and its `verified` counter, resolved once: looking a counter up by
/// its labels hashes them under a lock on every request.
struct SignedRoute {
    verifier: Arc<WebhookVerifier>,
    verified: prometheus::IntCounter,
}

impl Runtime {
    /// Builds from `config`, reusing `previous`'s limiter state for routes whose name and
    /// `rate_limit` are unchanged (a reload must not hand every client a fresh burst).
    pub fn build(
        config: &Config,
        previous: Option<&Runtime>,
        recorder: &Arc<dyn RecordingSink>,
        metrics: &Metrics,
        audit: Option<&(AuditLog, crate::keys::KeyBytes)>,
    ) -> Result<Self, UpstreamError> {
        let http_metrics = &metrics.http;
        let mut upstreams = std::collections::HashMap::new();
        for u in &config.upstreams {
            upstreams.insert(u.name.clone(), Upstream::build(u)?);
        }
        let routes = RouteTable::new(&config.routes);
        let route_lists = config
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    IpLists::new(r.allow.clone(), r.deny.clone()),
                )
            })
            .filter(|(_, l)| !l.is_empty())
            .collect();
        let limiters = config
            .routes
            .iter()
            .filter_map(|r| {
                let spec = r.rate_limit?;
                let kept = previous
                    .and_then(|p| p.limiters.get(&r.name))
                    .filter(|l| l.spec == spec)
                    .cloned();
                Some((
                    r.name.clone(),
                    kept.unwrap_or_else(|| Arc::new(RouteLimiter::new(spec))),
                ))
            })
            .collect();
        let ws_sessions = config
            .routes
            .iter()
            .filter_map(|r| {
                let max = r.max_websocket_sessions_per_ip?;
                let live = previous.and_then(|p| p.ws_sessions.get(&r.name));
                Some((r.name.clone(), keep_counter(live, max)))
            })
            .collect();
        let webhooks = config
            .routes
            .iter()
            .filter_map(|r| {
                let cfg = r.webhook.as_ref()?;
                let previous = previous.and_then(|p| p.webhooks.get(&r.name));
                Some((
                    r.name.clone(),
                    Arc::new(WebhookVerifier::build(cfg, previous.map(|p| p.as_ref()))),
                ))
            })
            .collect::<std::collections::HashMap<_, _>>();
        let route_state = routes
            .iter()
            .map(|r| RouteState {
                sessions: Arc::new(SessionSettings {
                    route: r.name.as_str().into(),
                    idle_timeout: r.websocket_idle_timeout,
                    max_message_bytes: r.websocket_max_message_bytes,
                    write_timeout: r.websocket_write_timeout,
                    media: r
                        .media
                        .as_ref()
                        .and_then(|m| MediaRoute::from_config(m, recorder)),
                    max_duration: r.media.as_ref().map(|m| m.max_duration),
                    audit: audit.cloned(),
                }),
                upstream: upstreams[&r.upstream].clone(),
                http: Arc::new(RouteHttpMetrics::new(http_metrics, &r.name)),
                webhook: webhooks
                    .get(&r.name)
                    .map(|verifier: &Arc<WebhookVerifier>| SignedRoute {
                        verifier: verifier.clone(),
                        verified: metrics
                            .webhook
                            .verified
                            .with_label_values(&[&r.name, verifier.scheme.name()]),
                    }),
            })
            .collect();
        let media_sessions = config
            .routes
            .iter()
            .filter_map(|r| {
                let max = r.media.as_ref()?.max_sessions?;
                let live = previous.and_then(|p| p.media_sessions.get(&r.name));
                Some((r.name.clone(), keep_counter(live, max)))
            })
            .collect();
        Ok(Self {
            limiters,
            ws_sessions,
            webhooks,
            media_sessions,
            route_state,
            unrouted: Arc::new(RouteHttpMetrics::new(http_metrics, "none")),
            routes,
            trusted_proxies: config.server.trusted_proxies.clone(),
            accept_lists: IpLists::new(config.server.allow.clone(), config.server.deny.clone()),
            route_lists,
            upstreams,
            hsts: config
                .server
                .hsts
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
        })
    }
}

/// The live session counter of a route across a reload (its new cap applied), or a fresh one.
fn keep_counter(live: Option<&Arc<PerIpCounter>>, max: u32) -> Arc<PerIpCounter> {
    match live {
        Some(live) => {
            live.set_max(max);
            live.clone()
        }
        None => PerIpCounter::new(max),
    }
}

/// Shared by every connection.
pub struct Pipeline {
    pub runtime: ArcSwap<Runtime>,
    /// Survives reloads: rules are replaced, bans kept.
    pub bans: BanList,
    pub metrics: Metrics,
    pub drain: Drain,
    ids: RequestIds,
    /// The audit log, and the key that hashes identifiers in it.
    pub audit: Option<(AuditLog, crate::keys::KeyBytes)>,
    /// Security alert gauges over the offences.
    pub alerts: crate::alerts::Alerts,
    /// Refusals counted per (reason, client, route) and written to the audit log once a minute, so an
    /// attack cannot flood it. Bounded: past `REFUSAL_KEYS`, further keys are folded into one entry.
    refusals: std::sync::Mutex<(RefusalCounts, Instant)>,
}

/// Refusals by (reason, client, route) since the last flush.
type RefusalCounts = std::collections::HashMap<(&'static str, std::net::IpAddr, String), u64>;

/// Distinct (reason, client, route) keys aggregated per minute before the rest are folded together.
const REFUSAL_KEYS: usize = 10_000;

/// Per-connection facts the pipeline needs.
#[derive(Clone)]
pub struct ConnCtx<K> {
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    /// Released when the last holder drops; WebSocket sessions hold it past the HTTP connection.
    pub keep: K,
}

/// A WebSocket handshake's `Origin` against the route's list: an empty list allows any; a request
/// without `Origin` (not a browser) passes, since only browsers can be made to send it cross-site.
fn origin_allowed(allowed: &[String], headers: &http::HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(origin), None) => origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o))),
        (Some(_), Some(_)) => false,
    }
}

impl Pipeline {
    pub fn new(
        runtime: Runtime,
        bans: BanList,
        metrics: Metrics,
        drain: Drain,
        audit: Option<(AuditLog, crate::keys::KeyBytes)>,
        alerts: crate::alerts::Alerts,
    ) -> Arc<Self> {
        Arc::new(Self {
            audit,
            alerts,
            refusals: std::sync::Mutex::new((std::collections::HashMap::new(), Instant::now())),
            runtime: ArcSwap::from_pointee(runtime),
            bans,
            metrics,
            drain,
            ids: RequestIds::new(),
        })
    }

    /// Handles one request; never fails (every failure is a response).
    ///
    /// A plain function returning the future: an `async fn` would keep its arguments (the request's
    /// head, ~260 bytes) twice in a future that hyper moves into place for every request and keeps
    /// allocated for every connection.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of its arguments in its future"
    )]
    pub fn handle<K: Clone + Send + Sync + 'static>(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnCtx<K>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        async move {
            let started = Instant::now();
            let in_flight = conn.activity.enter();
            let rt = self.runtime.load_full();
            let request_id = self.ids.next();
            // The client's Host (h2: `:authority`), kept as a header value: forwarding reuses its
            // bytes for `Host` and `X-Forwarded-Host` instead of copying them twice.
            let host_value = req
                .headers()
                .get(header::HOST)
                .filter(|h| h.to_str().is_ok())
                .cloned()
                .or_else(|| {
                    let authority = req.uri().authority()?;
                    http::HeaderValue::from_str(authority.as_str()).ok()
                });
            let host = host_value.as_ref().and_then(|h| h.to_str().ok());
            let method = req.method().clone();
            let peer = conn.peer.ip().to_canonical();
            let decided = client_ip(peer, req.headers(), &rt.trusted_proxies);
            if decided.malformed_forwarded_for {
                self.metrics.admission.malformed_forwarded_for.inc();
            }
            let client = decided.ip;

            let bad_host =
                crate::proxy::headers::check_host(req.version(), req.uri(), req.headers()).err();
            let selected = match bad_host {
                Some(_) => None,
                None => rt.routes.select_indexed(host, req.uri().path()),
            };
            let route_metrics = selected.map_or(&rt.unrouted, |(i, _)| &rt.route_state[i].http);
            let route_metrics = route_metrics.clone();
            let mut response = match selected {
                None if bad_host.is_some() => {
                    tracing::debug!(reason = ?bad_host, "ambiguous Host; refused");
                    self.refuse(Rejection::BadHost)
                }
                None => Rejection::NoRoute.response(),
                Some((index, route)) => match self.admit(&rt, route, client, &req) {
                    Err(rejection) => rejection.response(),
                    Ok(session_slot) => {
                        let ctx = ForwardCtx {
                            peer,
                            original_host: host_value.as_ref(),
                            request_id: request_id.as_str(),
                            activity: &conn.activity,
                        };
                        let state = &rt.route_state[index];
                        match &state.webhook {
                            None => {
                                self.proxy((route, state), req, ctx, &conn, session_slot)
                                    .await
                            }
                            Some(signed) => {
                                let (parts, body) = req.into_parts();
                                let id = request_id.as_str();
                                match self
                                    .verify_webhook(signed, route, (&parts, body), client, id)
                                    .await
                                {
                                    Err(rejection) => self.refuse(rejection),
                                    Ok((body, claim)) => {
                                        let body = http_body_util::Full::new(body);
                                        let req = Request::from_parts(parts, body);
                                        let res = self
                                            .proxy((route, state), req, ctx, &conn, session_slot)
                                            .await;
                                        if let Some(claim) = claim {
                                            claim.settle(res.status());
                                        }
                                        res
                                    }
                                }
                            }
                        }
                    }
                },
            };
            harden_response(response.headers_mut(), rt.hsts.as_ref());
            let record = AccessRecord {
                route: route_metrics,
                method,
                status: response.status().as_u16(),
                client,
                request_id,
                started,
            };
            Ok(response.map(|body| {
                http_body_util::BodyExt::boxed(Tracked::new(body, record, Some(in_flight)))
            }))
        }
    }

    /// Admission after routing: the route's allow/deny list, then its rate limits. Records refusals.
    /// For a WebSocket handshake it also takes a session slot for the client on this route.
    fn admit(
        &self,
        rt: &Runtime,
        route: &RouteConfig,
        client: std::net::IpAddr,
        req: &Request<Incoming>,
    ) -> Result<Vec<Slot>, Rejection> {
        let m = &self.metrics.admission;
        // Clients behind trusted proxies are only known here; direct ones were checked at accept.
        if self.bans.banned(client).is_some() {
            m.refusals.with_label_values(&["banned", &route.name]).inc();
            return Err(Rejection::Forbidden);
        }
        if let Some(lists) = rt.route_lists.get(&route.name) {
            lists.check(client).map_err(|refusal| {
                m.refusals
                    .with_label_values(&[refusal.label(), &route.name])
                    .inc();
                self.count_refusal(refusal.label(), client, &route.name);
                Rejection::Forbidden
            })?;
        }
        if let Some(limiter) = rt.limiters.get(&route.name) {
            limiter.check(client).map_err(|limited| {
                m.rate_limited
                    .with_label_values(&[&route.name, limited.scope()])
                    .inc();
                self.record_offence(Offence::RateLimited, client);
                self.count_refusal("rate_limited", client, &route.name);
                Rejection::RateLimited {
                    retry_after_secs: limited.retry_after_secs(),
                }
            })?;
        }
        let websocket =
            route.websocket && crate::proxy::headers::is_websocket_upgrade(req.headers());
        let mut slots = Vec::new();
        if !websocket {
            return Ok(slots);
        }
        if !origin_allowed(&route.websocket_allowed_origins, req.headers()) {
            m.refusals.with_label_values(&["origin", &route.name]).inc();
            self.count_refusal("origin", client, &route.name);
            return Err(Rejection::Forbidden);
        }
        if let Some(sessions) = rt.ws_sessions.get(&route.name) {
            slots.push(sessions.try_acquire(client).ok_or_else(|| {
                m.refusals
                    .with_label_values(&["websocket_sessions", &route.name])
                    .inc();
                Rejection::TooManySessions
            })?);
        }
        if let Some(sessions) = rt.media_sessions.get(&route.name) {
            // One key for the whole route.
            slots.push(sessions.try_acquire(ROUTE_WIDE).ok_or_else(|| {
                m.refusals
                    .with_label_values(&["media_sessions", &route.name])
                    .inc();
                Rejection::TooManySessions
            })?);
        }
        Ok(slots)
    }

    /// Buffers the body of a signed route and verifies it; on success returns the exact bytes to
    /// forward and the delivery's replay claim. Failures are counted by reason, logged without the
    /// signature, and (except replays) fed into the ban rules. The head is borrowed, not moved in
    /// and out: it is a few hundred bytes, copied at every move.
    async fn verify_webhook(
        &self,
        signed: &SignedRoute,
        route: &RouteConfig,
        (parts, body): (&http::request::Parts, Incoming),
        client: std::net::IpAddr,
        request_id: &str,
    ) -> Result<(bytes::Bytes, Option<Claim>), Rejection> {
        let verifier = &signed.verifier;
        let declared = crate::proxy::http::content_length(&parts.headers);
        let body =
            crate::proxy::body::buffer(body, declared, route.max_body_bytes, verifier.body_timeout)
                .await?;
        let incoming = verifier::Incoming {
            method: &parts.method,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            websocket: route.websocket
                && crate::proxy::headers::is_websocket_upgrade(&parts.headers),
            headers: &parts.headers,
            body: &body,
            now: unix_now(),
        };
        let scheme = verifier.scheme.name();
        let m = &self.metrics.webhook;
        match verifier.verify(&incoming) {
            Ok(claim) => {
                signed.verified.inc();
                Ok((body, claim))
            }
            Err(failure) => {
                m.failures
                    .with_label_values(&[&route.name, scheme, failure.label()])
                    .inc();
                tracing::warn!(
                    route = %route.name,
                    scheme,
                    reason = failure.label(),
                    client = %client,
                    request_id,
                    "webhook refused"
                );
                if let Some((audit, _)) = &self.audit {
                    audit.record(
                        AuditEvent::new(
                            "webhook_signature_failure",
                            "denied",
                            serde_json::json!({"client": client.to_string(), "scheme": scheme, "reason": failure.label()}),
                        )
                        .route(&route.name),
                    );
                }
                if failure == Failure::Replayed {
                    Err(Rejection::Replayed)
                } else {
                    self.record_offence(Offence::SignatureFailure, client);
                    Err(Rejection::BadSignature)
                }
            }
        }
    }

    /// Counts a refusal for the audit log's per-minute aggregate.
    fn count_refusal(&self, reason: &'static str, client: std::net::IpAddr, route: &str) {
        if self.audit.is_none() {
            return;
        }
        let mut guard = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let full = guard.0.len() >= REFUSAL_KEYS;
        let key = if full {
            (
                reason,
                std::net::IpAddr::from([0, 0, 0, 0]),
                "_other".to_string(),
            )
        } else {
            (reason, client, route.to_string())
        };
        *guard.0.entry(key).or_insert(0) += 1;
    }

    /// Writes the aggregated refusals once a minute (called by the periodic sweep), or at once with
    /// `now` (on drain).
    pub fn flush_refusals(&self, now: bool) {
        let Some((audit, _)) = &self.audit else {
            return;
        };
        let drained = {
            let mut guard = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if !now && guard.1.elapsed() < std::time::Duration::from_secs(60) {
                return;
            }
            guard.1 = Instant::now();
            std::mem::take(&mut guard.0)
        };
        for ((reason, client, route), count) in drained {
            let event = if reason == "rate_limited" {
                "rate_limited"
            } else {
                "refused"
            };
            audit.record(
                AuditEvent::new(event, "denied", serde_json::json!({"client": client.to_string(), "reason": reason, "count": count, "period_s": 60}))
                    .route(&route),
            );
        }
    }

    /// Feeds one offence into the ban rules (rate limiting here; webhook signature failures from
    /// the signature checks). Records a ban that fires.
    pub fn record_offence(&self, offence: Offence, client: std::net::IpAddr) {
        self.alerts.record(offence);
        if let Some(ban) = self.bans.record(offence, client) {
            let m = &self.metrics.admission;
            m.bans.with_label_values(&[&ban.rule]).inc();
            m.bans_active.set(self.bans.active_bans() as i64);
            tracing::warn!(client = %client, rule = %ban.rule, duration = ?ban.duration, "client banned");
            if let Some((audit, _)) = &self.audit {
                audit.record(AuditEvent::new(
                    "ban",
                    "ok",
                    serde_json::json!({"client": client.to_string(), "rule": ban.rule, "duration_s": ban.duration.as_secs()}),
                ));
            }
        }
    }

    /// Drops limiter keys whose bucket is full again and publishes key and eviction counts.
    /// Called periodically by the app, off the request path.
    pub fn sweep_limiters(&self) {
        self.flush_refusals(false);
        self.alerts.publish();
        let rt = self.runtime.load();
        let m = &self.metrics.admission;
        m.bans_active.set(self.bans.sweep() as i64);
        let w = &self.metrics.webhook;
        for (route, verifier) in &rt.webhooks {
            if let Some(cache) = &verifier.replay {
                w.replay_ids
                    .with_label_values(&[route])
                    .set(cache.sweep() as i64);
                let counter = w.replay_evictions.with_label_values(&[route]);
                let evictions = cache.evictions();
                if evictions > counter.get() {
                    counter.inc_by(evictions - counter.get());
                }
            }
        }
        for (route, limiter) in &rt.limiters {
            let (keys, evictions) = limiter.sweep();
            m.tracked_keys.with_label_values(&[route]).set(keys as i64);
            let counter = m.evictions.with_label_values(&[route]);
            if evictions > counter.get() {
                counter.inc_by(evictions - counter.get());
            }
        }
    }

    /// Forwards to the route's upstream; starts the WebSocket session on a 101.
    async fn proxy<K: Clone + Send + Sync + 'static, B>(
        &self,
        (route, state): (&RouteConfig, &RouteState),
        req: Request<B>,
        ctx: ForwardCtx<'_>,
        conn: &ConnCtx<K>,
        session_slot: Vec<Slot>,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<crate::proxy::body::BoxError>,
    {
        match forward(route, &state.upstream, req, ctx).await {
            Ok(fwd) => {
                if let Some((client_up, upstream_up)) = fwd.websocket {
                    self.drain.tasks.spawn(session::run(
                        client_up,
                        upstream_up,
                        state.sessions.clone(),
                        self.metrics.ws.clone(),
                        self.metrics.media.clone(),
                        self.drain.grace_over.clone(),
                        (conn.keep.clone(), session_slot),
                    ));
                }
                fwd.response
            }
            Err(rejection) => {
                if let Some(reason) = rejection.upstream_reason() {
                    self.metrics
                        .http
                        .upstream_errors
                        .with_label_values(&[&state.upstream.name, reason])
                        .inc();
                }
                self.refuse(rejection)
            }
        }
    }

    /// The response for a rejection, counting the malformed ones.
    fn refuse(&self, rejection: Rejection) -> Response<ProxyBody> {
        if let Some(reason) = rejection.malformed_reason() {
            self.metrics
                .http
                .malformed
                .with_label_values(&[reason])
                .inc();
        }
        rejection.response()
    }
}
