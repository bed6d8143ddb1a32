//! Header rewriting on the way to the upstream and back: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, `X-Request-Id`, and the response hardening headers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Always hop-by-hop, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes the fixed hop-by-hop set, `Proxy-Authorization`, and every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, and each removal hashes.
    // Headers named in `Connection` need `Connection` itself, which is in the set.
    let any = headers
        .keys()
        .any(|name| name == header::PROXY_AUTHORIZATION || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
}

/// True when `Connection` lists `upgrade` and `Upgrade` is `websocket` (an HTTP/1.1 WebSocket handshake).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
        });
    connection_upgrade && upgrade_ws
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto`, `X-Forwarded-Host` and
/// `X-Request-Id` (always a fresh id: a client-chosen id would let callers forge log correlation).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    original_host: Option<&HeaderValue>,
    request_id: &str,
) {
    // The four headers below, in one growth of the map rather than one per insert.
    headers.reserve(4);
    // An IPv6 address is at most 39 characters.
    let mut xff = String::with_capacity(39);
    if let Some(prev) = headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok())
        && !prev.trim().is_empty()
    {
        xff.reserve(prev.len() + 2);
        xff.push_str(prev);
        xff.push_str(", ");
    }
    push_ip(&mut xff, client);
    // `insert` replaces every earlier value. The string becomes the header's bytes without a copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match original_host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
}

/// Appends `ip` as `Display` writes it. IPv4 digit by digit: `Display` for an address goes through
/// the formatter's padding support and costs more than the rest of the header rewrite.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Why a request's authority is ambiguous; RFC 9112 §3.2 requires 400 for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    /// HTTP/1.1 without `Host`.
    Missing,
    /// More than one `Host` line.
    Repeated,
    /// Not a valid `host[:port]` (userinfo, path, spaces, bytes outside ASCII).
    Malformed,
    /// An absolute-form target or h2 `:authority` that names another host than `Host`.
    Mismatch,
}

/// Checks that the request names exactly one authority, so routing, the upstream's `Host` and
/// `X-Forwarded-Host` all see the same one (the backend can never be told a different host than
/// the proxy routed on).
pub fn check_host(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<(), BadHost> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(BadHost::Repeated),
        (None, None) if version == http::Version::HTTP_11 && uri.authority().is_none() => {
            return Err(BadHost::Missing);
        }
        (None, None) => return Ok(()),
        (Some(h), None) => h,
    };
    let host = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .filter(|a| !a.as_str().contains('@') && !a.as_str().is_empty())
        .ok_or(BadHost::Malformed)?;
    match uri.authority() {
        Some(target) if !target.as_str().eq_ignore_ascii_case(host.as_str()) => {
            Err(BadHost::Mismatch)
        }
        _ => Ok(()),
    }
}

/// Strips what the client must not learn and adds the hardening headers.
pub fn harden_response(headers: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    headers.remove(header::SERVER);
    if let Some(v) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// Request ids: a random per-process prefix and a counter. Unique, cheap, no lock.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        Self {
            prefix: h.finish(),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Not `format!`, and not a `String`: the id lives on the stack until the header copies it.
        let mut id = [0u8; 32];
        let bytes = (u128::from(self.prefix) << 64 | u128::from(n)).to_be_bytes();
        crate::admission::signature::encoding::hex_into(&bytes, &mut id);
        RequestId(id)
    }
}

/// A request id: 32 lowercase hex digits (a random per-process prefix, then a counter).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut addresses: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.10",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        addresses.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 3, 9])));
        for ip in addresses {
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("voice.example"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("x"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before, "Proxy-Authorization alone is found and removed");
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(&HeaderValue::from_static("voice.example")),
            "id1",
        );
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "voice.example");
        assert_eq!(h[X_REQUEST_ID], "id1");
    }

    #[test]
    fn detects_websocket_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.remove(header::UPGRADE);
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn host_must_be_single_valid_and_agree_with_the_target() {
        use http::Version;
        let check = |version, uri: &str, hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(header::HOST, HeaderValue::from_str(v).unwrap());
            }
            check_host(version, &uri.parse().unwrap(), &h)
        };
        assert_eq!(check(Version::HTTP_11, "/a", &["voice.example"]), Ok(()));
        assert_eq!(
            check(Version::HTTP_11, "/a", &["voice.example:8443"]),
            Ok(())
        );
        assert_eq!(check(Version::HTTP_10, "/a", &[]), Ok(()));
        assert_eq!(
            check(Version::HTTP_2, "https://voice.example/a", &[]),
            Ok(())
        );
        assert_eq!(
            check(
                Version::HTTP_11,
                "http://VOICE.example/a",
                &["voice.example"]
            ),
            Ok(())
        );
        assert_eq!(check(Version::HTTP_11, "/a", &[]), Err(BadHost::Missing));
        assert_eq!(
            check(Version::HTTP_11, "/a", &["a.example", "b.example"]),
            Err(BadHost::Repeated)
        );
        assert_eq!(
            check(Version::HTTP_10, "/a", &["a.example", "a.example"]),
            Err(BadHost::Repeated)
        );
        for bad in ["user@voice.example", "voice.example/x", "a b", ""] {
            assert_eq!(
                check(Version::HTTP_11, "/a", &[bad]),
                Err(BadHost::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            check(
                Version::HTTP_11,
                "http://evil.example/a",
                &["voice.example"]
            ),
            Err(BadHost::Mismatch)
        );
        assert_eq!(
            check(
                Version::HTTP_2,
                "https://evil.example/a",
                &["voice.example"]
            ),
            Err(BadHost::Mismatch)
        );
    }

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(
                id.as_str()
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
    }
}
