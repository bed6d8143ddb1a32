//! TLS listener: versions, ALPN, the dev certificate, certificate reload, mTLS.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::backend::spawn_backend;
use crate::support::client::{get, h1_over, read, tls_config, tls_connect};
use crate::support::{admin_get, spawn_proxy, spawn_proxy_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_tls12_handshakes_trust_the_generated_certificate() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    for (version, expect) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let tls = tls_connect(
            proxy.tls,
            tls_config(&[&proxy.ca_pem], &[b"http/1.1"], &[version]),
        )
        .await
        .expect("handshake with the generated certificate");
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expect));
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        let name = format!("{suite:?}");
        assert!(
            name.contains("GCM") || name.contains("CHACHA20"),
            "AEAD suite only, got {name}"
        );
        let mut send = h1_over(tls).await;
        let (status, _, _) = read(send.send_request(get("/headers")).await.unwrap()).await;
        assert_eq!(status, 200);
    }
    let pem = String::from_utf8(proxy.ca_pem.clone()).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
}

/// A hand-written TLS 1.1 ClientHello (no supported_versions extension): the server must refuse it
/// with a protocol_version alert, and count the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_is_refused() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x11; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let extensions = [
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17][..], // supported_groups: secp256r1
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],             // ec_point_formats: uncompressed
        &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03][..], // signature_algorithms: ecdsa_secp256r1_sha256
    ]
    .concat();
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend_from_slice(&handshake);

    let mut tcp = tokio::net::TcpStream::connect(proxy.tls).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply[0], 0x15, "alert record expected, got {reply:?}");
    assert_eq!(reply[5], 2, "fatal alert");
    // rustls answers handshake_failure (40) when the hello lacks TLS 1.2+; protocol_version (70) is also a refusal.
    assert!(
        matches!(reply[6], 40 | 70),
        "refusal alert, got {}",
        reply[6]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_tls_handshake_failures_total{reason=\"protocol_version\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http11() {
    let proxy = spawn_proxy(spawn_backend().await, "", "").await;
    for proto in [&b"h2"[..], &b"http/1.1"[..]] {
        let tls = tls_connect(
            proxy.tls,
            tls_config(&[&proxy.ca_pem], &[proto], &[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(proto));
    }
}

fn write_cert(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), c.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), c.key_pair.serialize_pem()).unwrap();
    c.cert.pem().into_bytes()
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The Kubernetes way: `tls.crt` → `..data/tls.crt`, and `..data` is a symlink swapped atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_is_picked_up_by_new_handshakes_only() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().to_path_buf();
    std::fs::create_dir(d.join("v1")).unwrap();
    std::fs::create_dir(d.join("v2")).unwrap();
    let pem_a = write_cert(&d.join("v1"), "tls");
    let pem_b = write_cert(&d.join("v2"), "tls");
    std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", d.join("tls.key")).unwrap();
    let tls_section = format!(
        "[server.tls]\ncert_file = \"{0}/tls.crt\"\nkey_file = \"{0}/tls.key\"\nreload_interval = \"100ms\"\n",
        d.display()
    );
    let text = crate::support::config_text(d, backend, "", "");
    // [server.tls] must follow [server]'s keys: append it after the whole file is fine in TOML.
    let text = format!("{text}\n{tls_section}");
    let proxy = spawn_proxy_with(dir, &text).await;
    let trust_both = tls_config(
        &[&pem_a, &pem_b],
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    );

    let old = tls_connect(proxy.tls, trust_both.clone()).await.unwrap();
    assert_eq!(peer_cert(&old), der_of(&pem_a));
    let mut old_conn = h1_over(old).await;

    // Atomic swap of the ..data symlink, as the kubelet does.
    std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let mut seen_b = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fresh = tls_connect(proxy.tls, trust_both.clone()).await.unwrap();
        if peer_cert(&fresh) == der_of(&pem_b) {
            seen_b = true;
            break;
        }
    }
    assert!(seen_b, "a new handshake must use the new certificate");
    let (status, _, _) = read(old_conn.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(status, 200, "the old connection keeps working");

    // A broken new file keeps the current certificate.
    std::fs::write(d.join("v2/tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = tls_connect(proxy.tls, trust_both).await.unwrap();
    assert_eq!(peer_cert(&fresh), der_of(&pem_b));
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_tls_certificate_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voxguard_tls_certificate_reloads_total{outcome=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let ca_path = dir.path().join("clients-ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let text = format!(
        "{}\n[server.tls]\nclient_ca_file = \"{}\"\n",
        crate::support::config_text(dir.path(), backend, "", ""),
        ca_path.display()
    );
    let proxy = spawn_proxy_with(dir, &text).await;

    // Without a client certificate: the handshake (or the first read) fails.
    let anonymous = tls_connect(
        proxy.tls,
        tls_config(&[&proxy.ca_pem], &[b"http/1.1"], &[&rustls::version::TLS13]),
    )
    .await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await;
            let mut buf = [0u8; 16];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(
        refused,
        "a client without a certificate must not get through"
    );

    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(crate::support::client::roots(&[&proxy.ca_pem]))
    .with_client_auth_cert(
        vec![client_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(proxy.tls, std::sync::Arc::new(cfg))
        .await
        .unwrap();
    let mut send = h1_over(tls).await;
    let (status, _, _) = read(send.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_cut_off_by_the_handshake_timeout() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[server.tls]\nhandshake_timeout = \"300ms\"\n",
        crate::support::config_text(dir.path(), backend, "", "")
    );
    let proxy = spawn_proxy_with(dir, &text).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.tls).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the proxy must close a client that never says hello")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_tls_handshake_failures_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
}
