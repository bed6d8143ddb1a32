//! rustls server side: TLS 1.2 + 1.3, AEAD/ECDHE suites only (ring's defaults are exactly those),
//! ALPN h2 + http/1.1, optional client certificates, a development certificate when none is
//! configured, and certificate reload by polling the files.
//!
//! Reload polls instead of using inotify: reading the paths each interval follows symlinks, so the
//! atomic `..data` swap Kubernetes does for mounted Secrets is seen like any other change.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;
use crate::metrics::NetMetrics;

/// File names of the development certificate inside `data_dir`.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
pub const DEV_KEY_FILE: &str = "dev-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The one crypto provider of the process (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub struct CertSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True for the generated development certificate.
    pub dev: bool,
}

/// Picks the configured files, or creates (once) and reuses the development certificate.
pub fn cert_source(tls: &TlsConfig, data_dir: &Path) -> Result<CertSource, TlsError> {
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        return Ok(CertSource {
            cert: cert.clone(),
            key: key.clone(),
            dev: false,
        });
    }
    let cert = data_dir.join(DEV_CERT_FILE);
    let key = data_dir.join(DEV_KEY_FILE);
    if !(cert.exists() && key.exists() && load_certified_key(&cert, &key).is_ok()) {
        write_dev_cert(data_dir, &cert, &key)?;
    }
    tracing::warn!(
        cert = %cert.display(),
        "no server.tls.cert_file configured: using a self-signed certificate for localhost — for development only"
    );
    Ok(CertSource {
        cert,
        key,
        dev: true,
    })
}

fn write_dev_cert(dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| file_err(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| file_err(dir, e))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| file_err(cert, e))?;
    write_private(key, generated.key_pair.serialize_pem().as_bytes())?;
    write_private(cert, generated.cert.pem().as_bytes())?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = fs::read(cert).map_err(|e| file_err(cert, e))?;
    let key_pem = fs::read(key).map_err(|e| file_err(key, e))?;
    certified_key_from_pem(&cert_pem, &key_pem).map_err(|reason| file_err(cert, reason))
}

fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("bad key PEM: {e}"))?
        .ok_or("no private key block found in key file")?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| format!("{e}"))?;
    Ok(ck)
}

/// Serves the current certificate; swapped atomically on reload, so live connections keep theirs.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingResolver {
    pub fn new(initial: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
        })
    }

    /// Polls the files every `interval`; on a change that parses, swaps it in; on a bad file keeps
    /// the old certificate and logs why. Runs until `stop` is cancelled.
    pub async fn watch(
        self: Arc<Self>,
        source: CertSource,
        interval: Duration,
        metrics: NetMetrics,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut last = read_pair(&source).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(now) = read_pair(&source) else {
                continue; // mid-swap or briefly missing: try next tick
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match certified_key_from_pem(&now.0, &now.1) {
                Ok(ck) => {
                    publish_not_after(&ck, &metrics);
                    self.current.store(Arc::new(ck));
                    metrics.tls_cert_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %source.cert.display(), "TLS certificate reloaded");
                }
                Err(reason) => {
                    metrics.tls_cert_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(cert = %source.cert.display(), %reason, "new TLS certificate rejected; keeping the current one");
                }
            }
            last = Some(now);
        }
    }
}

/// Sets the expiry gauge from the leaf certificate.
pub fn publish_not_after(ck: &CertifiedKey, metrics: &NetMetrics) {
    if let Some(t) = ck
        .cert
        .first()
        .and_then(|leaf| super::cert_expiry::not_after(leaf))
    {
        metrics.tls_cert_not_after.set(t);
    }
}

fn read_pair(source: &CertSource) -> io::Result<(Vec<u8>, Vec<u8>)> {
    Ok((fs::read(&source.cert)?, fs::read(&source.key)?))
}

/// Builds the server config around a resolver.
pub fn server_config(
    tls: &TlsConfig,
    resolver: Arc<ReloadingResolver>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = fs::read(ca).map_err(|e| file_err(ca, e))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| file_err(ca, e))?;
                roots.add(cert).map_err(|e| file_err(ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_err(ca, "no CA certificate found"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A bounded metric label for a failed handshake.
pub fn handshake_failure_reason(err: &io::Error) -> &'static str {
    if let Some(e) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return match e {
            rustls::Error::PeerIncompatible(p) => match p {
                rustls::PeerIncompatible::NoCipherSuitesInCommon => "no_shared_cipher",
                rustls::PeerIncompatible::SupportedVersionsExtensionRequired
                | rustls::PeerIncompatible::Tls12NotOffered
                | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
                | rustls::PeerIncompatible::Tls13RequiredForQuic => "protocol_version",
                _ => "incompatible",
            },
            rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate) => {
                "bad_certificate"
            }
            rustls::Error::InvalidMessage(_) => "invalid_message",
            _ => "other",
        };
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => "eof",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let tls = crate::config::Config::parse("", "t", &|_| None)
            .unwrap()
            .server
            .tls;
        let first = cert_source(&tls, &data).unwrap();
        assert!(first.dev);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&first.cert), 0o600);
        assert_eq!(mode(&first.key), 0o600);
        let before = fs::read(&first.cert).unwrap();
        let second = cert_source(&tls, &data).unwrap();
        assert_eq!(
            fs::read(&second.cert).unwrap(),
            before,
            "dev certificate must be reused"
        );
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let err = certified_key_from_pem(
            a.cert.pem().as_bytes(),
            b.key_pair.serialize_pem().as_bytes(),
        );
        assert!(err.is_err());
        assert!(certified_key_from_pem(b"junk", b"junk").is_err());
    }
}
