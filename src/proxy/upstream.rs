//! Pooled keep-alive clients to upstreams, `http://` or `https://` (rustls, system roots or a
//! configured CA). Upstream connections speak HTTP/1.1 so WebSocket upgrades can share the pool.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::proxy::body::ProxyBody;

/// One configured upstream: where it is, its pool, and how long to wait for it.
pub struct Upstream {
    pub name: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    pub response_timeout: Duration,
    /// The longest gap between two reads of a response body.
    pub read_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream[{name}].ca_file {path}: {reason}")]
pub struct UpstreamError {
    name: String,
    path: String,
    reason: String,
}

impl Upstream {
    pub fn build(cfg: &UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let roots = roots(cfg)?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Self {
            name: cfg.name.clone(),
            scheme: cfg.url.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: cfg
                .url
                .authority()
                .cloned()
                .expect("validated: url has a host"),
            client,
            response_timeout: cfg.response_timeout,
            read_timeout: cfg.read_timeout,
        }))
    }

    /// The upstream URI for a request's path and query.
    pub fn uri_for(&self, path_and_query: Option<&http::uri::PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path are all set")
    }
}

fn roots(cfg: &UpstreamConfig) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let err = |reason: String| UpstreamError {
        name: cfg.name.clone(),
        path: cfg
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        reason,
    };
    match &cfg.ca_file {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| err(e.to_string()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no CA certificate found".into()));
            }
        }
        None if cfg.url.scheme_str() == Some("https") => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(upstream = %cfg.name, "no system CA certificates found; https upstream will fail to verify");
            }
        }
        None => {}
    }
    Ok(roots)
}
