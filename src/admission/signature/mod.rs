//! Webhook signature verification at the edge, one file per provider scheme behind
//! [`SignatureScheme`]. A scheme sees the request as the provider sent it — the public URL, the raw
//! headers and the exact body bytes — and answers `Ok` (with the id to remember against replays) or a
//! [`Failure`] reason. Reasons go to metrics and logs only; the client always gets the same 403.
//!
//! Rules every scheme follows: MACs are decoded into fixed-length bytes and compared in constant time
//! (`encoding::ct_eq`); a header that is empty, truncated, oversized or wrongly encoded is
//! `Malformed`, never a partial match; every configured secret is tried (rotation), without
//! short-circuiting on the first match.

pub mod encoding;
pub mod github;
pub mod hmac;
mod id_table;
pub mod replay;
pub mod slack;
pub mod standard;
pub mod stripe;
pub mod telnyx;
pub mod twilio;
pub mod verifier;

use http::{HeaderMap, Method};

pub use crate::config::webhook::{SchemeKind, Secret};

/// What a scheme sees of a request.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    /// The URL the provider called: the route's `public_url` plus the raw path and query.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Unix seconds.
    pub now: u64,
}

/// Why a request was not verified. The metric label is [`Failure::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
    #[error("signed timestamp outside the tolerance")]
    Stale,
    #[error("delivery already accepted")]
    Replayed,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Mismatch => "mismatch",
            Failure::Stale => "stale",
            Failure::Replayed => "replayed",
        }
    }
}

/// A verified request, with what identifies this delivery for replay protection: a repeat of any of
/// them is a replay. Empty: the scheme cannot tell a repeat from a new delivery, so nothing is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub replay_ids: Vec<Vec<u8>>,
}

/// One provider's signing scheme.
pub trait SignatureScheme: Send + Sync {
    /// Config name and metric label.
    fn name(&self) -> &'static str;

    /// Verifies `req` against every key (any one may match: secret rotation).
    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure>;

    /// The headers the provider would send for `req`, signed with `key` (for `voxguard webhook sign`
    /// and tests). For Telnyx the key is the private key.
    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String>;
}

/// The scheme for a validated config.
pub fn scheme_for(kind: &SchemeKind, tolerance: std::time::Duration) -> Box<dyn SignatureScheme> {
    let tolerance = tolerance.as_secs();
    match kind {
        SchemeKind::Twilio => Box::new(twilio::Twilio),
        SchemeKind::Github => Box::new(github::github()),
        SchemeKind::Stripe => Box::new(stripe::Stripe { tolerance }),
        SchemeKind::StandardWebhooks => Box::new(standard::StandardWebhooks { tolerance }),
        SchemeKind::Slack => Box::new(slack::Slack { tolerance }),
        SchemeKind::Telnyx => Box::new(telnyx::Telnyx { tolerance }),
        SchemeKind::Hmac(spec) => Box::new(hmac::Hmac::new("hmac", spec.clone())),
    }
}

/// One header as text, `Missing` if absent, `Malformed` if repeated, empty, over `max` bytes or not
/// visible ASCII.
pub(crate) fn header(
    h: &HeaderMap,
    name: impl http::header::AsHeaderName,
    max: usize,
) -> Result<&str, Failure> {
    let mut all = h.get_all(name).iter();
    let v = all.next().ok_or(Failure::Missing)?;
    if all.next().is_some() || v.is_empty() || v.len() > max {
        return Err(Failure::Malformed);
    }
    v.to_str().map(str::trim).map_err(|_| Failure::Malformed)
}

/// A Unix timestamp header within `tolerance` seconds of `now`, either way.
pub(crate) fn fresh_timestamp(value: &str, now: u64, tolerance: u64) -> Result<u64, Failure> {
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::Malformed);
    }
    let ts: u64 = value.parse().map_err(|_| Failure::Malformed)?;
    if ts.abs_diff(now) > tolerance {
        return Err(Failure::Stale);
    }
    Ok(ts)
}

/// The current time as Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A request for scheme tests.
    pub struct Req {
        pub method: Method,
        pub url: String,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
        pub now: u64,
    }

    impl Req {
        pub fn new(url: &str, body: &[u8], now: u64) -> Self {
            Self {
                method: Method::POST,
                url: url.into(),
                headers: HeaderMap::new(),
                body: body.to_vec(),
                now,
            }
        }

        pub fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers
                .append(name, http::HeaderValue::from_str(value).unwrap());
            self
        }

        pub fn signed(&self) -> SignedRequest<'_> {
            SignedRequest {
                method: &self.method,
                url: &self.url,
                headers: &self.headers,
                body: &self.body,
                now: self.now,
            }
        }

        /// Adds the headers `scheme` signs this request with.
        pub fn sign_with(mut self, scheme: &dyn SignatureScheme, key: &[u8]) -> Self {
            for (name, value) in scheme.sign(&self.signed(), key).unwrap() {
                self.headers.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(&value).unwrap(),
                );
            }
            self
        }
    }

    pub fn key(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }
}
