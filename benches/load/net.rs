//! Client connections: plain TCP or TLS (rustls, verifying against `--ca`), behind one type.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// Anything a client can read and write.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a load goes: `scheme://host:port/path?query`.
#[derive(Clone)]
pub struct Target {
    /// Offer only `h2` in the TLS handshake, and refuse a server that does not choose it.
    pub h2: bool,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub addr: String,
    pub authority: String,
    pub path_and_query: String,
    pub url: String,
}

impl Target {
    /// Parses the URL; TLS schemes trust `ca` (PEM) and keep a session cache for resumption.
    pub fn parse(url: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        Self::parse_for(url, ca, false)
    }

    /// As `parse`; with `h2`, every connection must negotiate HTTP/2 by ALPN (TLS only).
    pub fn parse_for(url: &str, ca: Option<&Path>, h2: bool) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let tls = match uri.scheme_str() {
            Some("https" | "wss") => true,
            Some("http" | "ws") => false,
            _ => bail!("URL must be http, https, ws or wss: {url}"),
        };
        let host = uri.host().context("URL has no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connector = if tls {
            let ca = ca.context("--ca is required for https:// and wss://")?;
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert?)?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            if h2 {
                config.alpn_protocols = vec![b"h2".to_vec()];
            }
            let name = ServerName::try_from(host_bare.clone())?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            anyhow::ensure!(!h2, "HTTP/2 is negotiated by TLS: use an https:// URL");
            None
        };
        Ok(Self {
            h2,
            tls: connector,
            addr: format!("{host_bare}:{port}"),
            authority: uri.authority().context("URL has no authority")?.to_string(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            url: url.to_string(),
        })
    }

    /// A new connection (TLS handshake included, resumed when the cache has a ticket).
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                let alpn = tls.get_ref().1.alpn_protocol();
                anyhow::ensure!(
                    !self.h2 || alpn == Some(b"h2".as_slice()),
                    "the server did not negotiate h2 (ALPN {:?})",
                    alpn.map(String::from_utf8_lossy)
                );
                Box::new(tls)
            }
            None => Box::new(tcp),
        })
    }
}
