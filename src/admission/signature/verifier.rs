//! One signed route's verifier: its scheme, keys, public URL and replay cache, built from
//! `[route.webhook]` and swapped on reload (the replay cache is kept while its settings are unchanged).

use std::sync::Arc;

use http::{HeaderMap, Method};

use super::replay::{Claim, ReplayCache};
use super::{Failure, SignatureScheme, SignedRequest, scheme_for};
use crate::config::webhook::{PublicUrl, Secret, WebhookConfig};

pub struct WebhookVerifier {
    pub scheme: Box<dyn SignatureScheme>,
    keys: Vec<Secret>,
    public_url: Option<PublicUrl>,
    pub replay: Option<Arc<ReplayCache>>,
    pub body_timeout: std::time::Duration,
}

/// The parts of a request the verifier reads.
pub struct Incoming<'a> {
    pub method: &'a Method,
    /// Raw, as the client sent it (`/voice?From=%2B1…`); never re-encoded.
    pub path_and_query: &'a str,
    /// A WebSocket handshake is signed over `wss://`.
    pub websocket: bool,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub now: u64,
}

impl WebhookVerifier {
    /// `previous`: the verifier this route had before a reload; its replay cache is kept when the
    /// scheme and replay settings are the same, so a reload does not forget accepted ids.
    pub fn build(cfg: &WebhookConfig, previous: Option<&WebhookVerifier>) -> Self {
        let scheme = scheme_for(&cfg.scheme, cfg.tolerance);
        let replay = cfg.replay.map(|spec| {
            previous
                .filter(|p| p.scheme.name() == scheme.name())
                .and_then(|p| p.replay.clone())
                .filter(|r| r.spec == spec)
                .unwrap_or_else(|| ReplayCache::with_system_clock(spec))
        });
        Self {
            scheme,
            keys: cfg.secrets.clone(),
            public_url: cfg.public_url.clone(),
            replay,
            body_timeout: cfg.body_timeout,
        }
    }

    /// Verifies the signature, then claims the delivery's ids. The claim must be settled with the
    /// backend's status (or dropped if there is none).
    pub fn verify(&self, req: &Incoming<'_>) -> Result<Option<Claim>, Failure> {
        let url = match &self.public_url {
            Some(p) => p.url_for(req.path_and_query, req.websocket),
            None => String::new(),
        };
        let signed = SignedRequest {
            method: req.method,
            url: &url,
            headers: req.headers,
            body: req.body,
            now: req.now,
        };
        let verified = self.scheme.verify(&signed, &self.keys)?;
        match &self.replay {
            Some(cache) if !verified.replay_ids.is_empty() => cache
                .claim(&verified.replay_ids)
                .map(Some)
                .map_err(|_| Failure::Replayed),
            _ => Ok(None),
        }
    }
}
