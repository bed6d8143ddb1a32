//! Route selection: host (exact, case-insensitive, port ignored) then the longest path prefix.
//! Pure: no metrics, no I/O. A linear scan over a pre-sorted table, no regex.

use std::sync::Arc;

use crate::config::RouteConfig;

/// Routes ordered so that the first match is the best one.
pub struct RouteTable {
    routes: Vec<Arc<RouteConfig>>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<Arc<RouteConfig>> = routes.iter().cloned().map(Arc::new).collect();
        // Host-specific routes first, then longer prefixes first.
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        Self { routes }
    }

    /// The route for a request, or `None` (→ 404). `host` may carry a port; it is stripped.
    pub fn select(&self, host: Option<&str>, path: &str) -> Option<&Arc<RouteConfig>> {
        self.select_indexed(host, path).map(|(_, r)| r)
    }

    /// As `select`, with the route's position in `iter()` (for state kept beside the table).
    pub fn select_indexed(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Option<(usize, &Arc<RouteConfig>)> {
        let host = host.map(strip_port);
        self.routes.iter().enumerate().find(|(_, r)| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && path.starts_with(r.path_prefix.as_str())
        })
    }

    /// The routes in match order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteConfig>> {
        self.routes.iter()
    }
}

/// `example.com:8443` → `example.com`; `[::1]:8443` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RouteTable {
        let c = Config::parse(toml, "t", &|_| None).unwrap();
        RouteTable::new(&c.routes)
    }

    const ROUTES: &str = r#"
        [[upstream]]
        name = "a"
        url = "http://127.0.0.1:1"
        [[route]]
        name = "root"
        path_prefix = "/"
        upstream = "a"
        [[route]]
        name = "voice"
        path_prefix = "/voice/"
        upstream = "a"
        [[route]]
        name = "voice-status"
        path_prefix = "/voice/status"
        upstream = "a"
        [[route]]
        name = "api-host"
        host = "api.example.com"
        path_prefix = "/"
        upstream = "a"
    "#;

    #[test]
    fn longest_prefix_wins() {
        let t = table(ROUTES);
        assert_eq!(
            t.select(None, "/voice/status/1").unwrap().name,
            "voice-status"
        );
        assert_eq!(t.select(None, "/voice/x").unwrap().name, "voice");
        assert_eq!(t.select(None, "/other").unwrap().name, "root");
    }

    #[test]
    fn host_routes_match_case_insensitively_without_port() {
        let t = table(ROUTES);
        assert_eq!(
            t.select(Some("API.example.com:8443"), "/voice/x")
                .unwrap()
                .name,
            "api-host"
        );
        assert_eq!(
            t.select(Some("other.example.com"), "/voice/x")
                .unwrap()
                .name,
            "voice"
        );
    }

    #[test]
    fn no_match_is_none() {
        let t = table(
            "[[upstream]]\nname=\"a\"\nurl=\"http://127.0.0.1:1\"\n[[route]]\npath_prefix=\"/only\"\nupstream=\"a\"\n",
        );
        assert!(t.select(None, "/else").is_none());
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
