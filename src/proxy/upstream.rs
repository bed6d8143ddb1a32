//! Configured upstreams: where each is, how long to wait for it, and its pool of keep-alive
//! connections, `http://` or `https://` (rustls, system roots or a configured CA). Upstream
//! connections speak HTTP/1.1 so WebSocket upgrades can share the pool.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use rustls::pki_types::ServerName;

use crate::config::UpstreamConfig;
use crate::proxy::pool::{Connector, Pool};

/// One configured upstream: where it is, its pool, and how long to wait for it.
pub struct Upstream {
    pub name: String,
    /// The `Host` a request carries when the route does not preserve the client's.
    pub host_header: HeaderValue,
    pub pool: Arc<Pool>,
    pub response_timeout: Duration,
    /// The longest gap between two reads of a response body.
    pub read_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream[{name}].{key}: {reason}")]
pub struct UpstreamError {
    name: String,
    key: &'static str,
    reason: String,
}

impl Upstream {
    pub fn build(cfg: &UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        let https = cfg.url.scheme_str() == Some("https");
        let authority = cfg.url.authority().expect("validated: url has a host");
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        // `Uri::host` keeps an IPv6 literal's brackets; DNS and TLS want the bare address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        // A configured CA file is checked even on an `http://` upstream: a typo must not wait
        // for the day the URL changes to `https://`.
        let roots = roots(cfg)?;
        let tls = if https {
            let mut tls = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("ring supports TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone()).map_err(|e| UpstreamError {
                name: cfg.name.clone(),
                key: "url",
                reason: format!("host is not a valid TLS server name: {e}"),
            })?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        // As hyper's client wrote it: the port only when it is not the scheme's default.
        let host_header = match authority.port_u16().filter(|p| *p != default_port) {
            Some(p) => format!("{}:{p}", authority.host()),
            None => authority.host().to_owned(),
        };
        let connector = Connector {
            host,
            port,
            tls,
            connect_timeout: cfg.connect_timeout,
        };
        Ok(Arc::new(Self {
            name: cfg.name.clone(),
            host_header: HeaderValue::from_str(&host_header)
                .expect("validated: a URI authority is a valid header value"),
            pool: Pool::new(connector, cfg.pool_idle_timeout),
            response_timeout: cfg.response_timeout,
            read_timeout: cfg.read_timeout,
        }))
    }

    /// The origin-form target (path and query) the upstream is sent.
    pub fn uri_for(path_and_query: Option<&http::uri::PathAndQuery>) -> Uri {
        match path_and_query {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        }
    }
}

fn roots(cfg: &UpstreamConfig) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    let err = |reason: String| UpstreamError {
        name: cfg.name.clone(),
        key: "ca_file",
        reason: format!(
            "{}: {reason}",
            cfg.ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
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
