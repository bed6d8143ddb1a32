//! Admission with distinct loopback clients (127.0.0.2, 127.0.0.3, …): allow/deny lists at accept
//! and per route, and the trusted-proxy rule for X-Forwarded-For.

use crate::support::backend::spawn_backend;
use crate::support::client::get_from;
use crate::support::{admin_get, config_text, spawn_proxy_with};

async fn proxy_with(server_extra: &str, route_extra: &str) -> crate::support::TestProxy {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, server_extra, route_extra);
    spawn_proxy_with(dir, &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_allow_and_deny_lists_refuse_with_403() {
    let proxy = proxy_with("", "allow = [\"127.0.0.0/24\"]\ndeny = [\"127.0.0.3\"]").await;
    let ok = get_from("127.0.0.2", proxy.tls, &proxy.ca_pem, "/headers", &[]).await;
    assert_eq!(ok.unwrap().0, 200);
    let denied = get_from("127.0.0.3", proxy.tls, &proxy.ca_pem, "/headers", &[])
        .await
        .unwrap();
    assert_eq!(
        denied,
        (403, "Forbidden\n".to_string()),
        "deny wins over allow; generic body"
    );
    let outside = get_from("127.0.1.5", proxy.tls, &proxy.ca_pem, "/headers", &[])
        .await
        .unwrap();
    assert_eq!(outside.0, 403);
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics
            .contains(r#"voxguard_admission_refusals_total{reason="deny_list",route="default"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"voxguard_admission_refusals_total{reason="not_allowed",route="default"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("127.0.0.3"), "no address in labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_deny_list_closes_the_connection_before_tls() {
    let proxy = proxy_with("deny = [\"127.0.0.3/32\"]", "").await;
    assert_eq!(
        get_from("127.0.0.2", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        get_from("127.0.0.3", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .is_none(),
        "a denied address must not complete a TLS handshake"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics
            .contains(r#"voxguard_admission_refusals_total{reason="deny_list",route="_accept"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("voxguard_tls_handshake_failures_total{"),
        "refused before TLS: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies_and_from_the_right() {
    let proxy = proxy_with(
        "trusted_proxies = [\"127.0.0.2\"]",
        "allow = [\"203.0.113.9\"]",
    )
    .await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];

    // Untrusted peer: its header is ignored, so the client is 127.0.0.3 — not allowed.
    let r = get_from(
        "127.0.0.3",
        proxy.tls,
        &proxy.ca_pem,
        "/headers",
        &xff("203.0.113.9"),
    )
    .await;
    assert_eq!(r.unwrap().0, 403);
    // Trusted peer: honoured, rightmost untrusted hop is the client.
    let (status, body) = get_from(
        "127.0.0.2",
        proxy.tls,
        &proxy.ca_pem,
        "/headers",
        &xff("198.51.100.1, 203.0.113.9"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("x-forwarded-for: 198.51.100.1, 203.0.113.9, 127.0.0.2"),
        "{body}"
    );
    // A spoofed leftmost entry does not help: the rightmost untrusted hop is 198.51.100.1.
    let r = get_from(
        "127.0.0.2",
        proxy.tls,
        &proxy.ca_pem,
        "/headers",
        &xff("203.0.113.9, 198.51.100.1"),
    )
    .await;
    assert_eq!(r.unwrap().0, 403);
    // Malformed from a trusted peer: falls back to the peer (not allowed here) and is counted.
    let r = get_from(
        "127.0.0.2",
        proxy.tls,
        &proxy.ca_pem,
        "/headers",
        &xff("203.0.113.9, bogus"),
    )
    .await;
    assert_eq!(r.unwrap().0, 403);
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("voxguard_forwarded_for_malformed_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_ip_rate_is_429_with_retry_after_per_client() {
    let proxy = proxy_with("", "rate_limit = { per_ip = \"1/m\", burst = 2 }").await;
    let ca = &proxy.ca_pem;
    for _ in 0..2 {
        assert_eq!(
            get_from("127.0.0.2", proxy.tls, ca, "/headers", &[])
                .await
                .unwrap()
                .0,
            200
        );
    }
    let mut send = crate::support::client::h1_from("127.0.0.2", proxy.tls, ca)
        .await
        .unwrap();
    let res = send
        .send_request(crate::support::client::get("/headers"))
        .await
        .unwrap();
    let (status, headers, body) = crate::support::client::read(res).await;
    assert_eq!((status, body.as_str()), (429, "Too Many Requests\n"));
    let retry: u32 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=60).contains(&retry),
        "Retry-After in whole seconds, got {retry}"
    );
    assert_eq!(
        get_from("127.0.0.3", proxy.tls, ca, "/headers", &[])
            .await
            .unwrap()
            .0,
        200,
        "another client has its own bucket"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_rate_limited_total{route="default",scope="per_ip"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_in_one_slash_64_share_a_bucket() {
    // Only ::1 is an IPv6 loopback address, so distinct IPv6 clients arrive via a trusted proxy.
    let proxy = proxy_with(
        "trusted_proxies = [\"127.0.0.2\"]",
        "rate_limit = { per_ip = \"1/m\", burst = 1 }",
    )
    .await;
    let from = async |xff: &str| {
        let h = [("x-forwarded-for", xff)];
        get_from("127.0.0.2", proxy.tls, &proxy.ca_pem, "/headers", &h)
            .await
            .unwrap()
            .0
    };
    assert_eq!(from("2001:db8:1:2::1").await, 200);
    assert_eq!(from("2001:db8:1:2:ffff::9").await, 429, "same /64");
    assert_eq!(from("2001:db8:1:3::1").await, 200, "different /64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_limiter_state_for_unchanged_routes() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let limited = config_text(
        dir.path(),
        backend,
        "",
        "rate_limit = { per_ip = \"1/m\", burst = 1 }",
    );
    let proxy = spawn_proxy_with(dir, &limited).await;
    let ca = &proxy.ca_pem;
    assert_eq!(
        get_from("127.0.0.2", proxy.tls, ca, "/headers", &[])
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        get_from("127.0.0.2", proxy.tls, ca, "/headers", &[])
            .await
            .unwrap()
            .0,
        429
    );

    let same = voxguard::Config::parse(&limited, "t", &|_| None).unwrap();
    proxy.app.reload(&same).unwrap();
    assert_eq!(
        get_from("127.0.0.2", proxy.tls, ca, "/headers", &[])
            .await
            .unwrap()
            .0,
        429,
        "an unchanged route keeps its limiter state across a reload"
    );
    let changed =
        voxguard::Config::parse(&limited.replace("burst = 1", "burst = 5"), "t", &|_| None)
            .unwrap();
    proxy.app.reload(&changed).unwrap();
    assert_eq!(
        get_from("127.0.0.2", proxy.tls, ca, "/headers", &[])
            .await
            .unwrap()
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_and_released() {
    let proxy = proxy_with("max_connections_per_ip = 1", "").await;
    let mut first = crate::support::client::h1_from("127.0.0.2", proxy.tls, &proxy.ca_pem)
        .await
        .unwrap();
    let res = first
        .send_request(crate::support::client::get("/headers"))
        .await
        .unwrap();
    assert_eq!(crate::support::client::read(res).await.0, 200);
    assert!(
        get_from("127.0.0.2", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .is_none(),
        "a second connection from the same address is closed"
    );
    assert_eq!(
        get_from("127.0.0.3", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .unwrap()
            .0,
        200
    );
    drop(first);
    let mut released = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if get_from("127.0.0.2", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .is_some()
        {
            released = true;
            break;
        }
    }
    assert!(released, "closing the first connection releases the slot");
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(
            r#"voxguard_admission_refusals_total{reason="ip_connections",route="_accept"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_per_address_and_route_are_capped() {
    let proxy = proxy_with(
        "trusted_proxies = [\"127.0.0.1\"]",
        "max_websocket_sessions_per_ip = 1",
    )
    .await;
    let ws = async |client: &str| {
        let h = [("x-forwarded-for", client)];
        crate::support::client::ws_connect(proxy.tls, &proxy.ca_pem, "/ws", &h).await
    };
    let (mut first, _) = ws("198.51.100.1").await.unwrap();
    match ws("198.51.100.1").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        ws("198.51.100.2").await.is_ok(),
        "another address has its own allowance"
    );
    first.close(None).await.unwrap();
    drop(first);
    let mut released = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if ws("198.51.100.1").await.is_ok() {
            released = true;
            break;
        }
    }
    assert!(released, "the slot is released when the session ends");
}

const BAN_ON_RATE_LIMITS: &str = "\n[[bans.rule]]\nname = \"flood\"\non = \"rate_limited\"\ncount = 2\nwindow = \"1m\"\nduration = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rate_limiting_bans_the_address_at_accept_until_the_ban_expires() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{BAN_ON_RATE_LIMITS}",
        config_text(
            dir.path(),
            backend,
            "",
            "rate_limit = { per_ip = \"1/m\", burst = 1 }"
        )
    );
    let proxy = spawn_proxy_with(dir, &text).await;
    let ca = &proxy.ca_pem;
    let status = async |src: &str| {
        get_from(src, proxy.tls, ca, "/headers", &[])
            .await
            .map(|r| r.0)
    };
    assert_eq!(status("127.0.0.2").await, Some(200));
    assert_eq!(status("127.0.0.2").await, Some(429), "first offence");
    assert_eq!(
        status("127.0.0.2").await,
        Some(429),
        "second offence: the rule fires"
    );
    assert_eq!(status("127.0.0.2").await, None, "banned: closed before TLS");
    assert_eq!(
        status("127.0.0.3").await,
        Some(200),
        "other addresses are not affected"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_bans_total{rule="flood"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("voxguard_bans_active 1"), "{metrics}");
    assert!(
        metrics.contains(r#"voxguard_admission_refusals_total{reason="banned",route="_accept"} 1"#),
        "{metrics}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        status("127.0.0.2").await,
        Some(429),
        "the ban expired; the rate limit still applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_failure_hook_bans_after_five_failures() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let rule = "\n[[bans.rule]]\nname = \"bad-signatures\"\non = \"signature_failure\"\ncount = 5\nwindow = \"15m\"\nduration = \"1h\"\n";
    let text = format!(
        "{}{rule}",
        config_text(dir.path(), backend, "trusted_proxies = [\"127.0.0.2\"]", "")
    );
    let proxy = spawn_proxy_with(dir, &text).await;
    let offender: std::net::IpAddr = "127.0.0.4".parse().unwrap();
    for _ in 0..4 {
        proxy.app.record_offence(
            voxguard::admission::ban::Offence::SignatureFailure,
            offender,
        );
    }
    assert!(
        get_from("127.0.0.4", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .is_some(),
        "four are not enough"
    );
    proxy.app.record_offence(
        voxguard::admission::ban::Offence::SignatureFailure,
        offender,
    );
    assert!(
        get_from("127.0.0.4", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .is_none(),
        "banned at accept"
    );
    // Behind a trusted proxy the ban applies once the client address is known: 403.
    let via_proxy = get_from(
        "127.0.0.2",
        proxy.tls,
        &proxy.ca_pem,
        "/headers",
        &[("x-forwarded-for", "127.0.0.4")],
    )
    .await;
    assert_eq!(via_proxy.unwrap().0, 403);
}

/// Sends `header` on a fresh TCP connection, then TLS and one GET. `None` if the proxy closed it.
async fn get_after_proxy_header(
    proxy: &crate::support::TestProxy,
    header: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(proxy.tls).await.ok()?;
    tcp.write_all(header).await.ok()?;
    let cfg = crate::support::client::tls_config(
        &[&proxy.ca_pem],
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    );
    let tls = crate::support::client::tls_over(tcp, cfg).await.ok()?;
    let mut send = crate::support::client::h1_over(tls).await;
    let res = send
        .send_request(crate::support::client::get("/headers"))
        .await
        .ok()?;
    let (status, _, body) = crate::support::client::read(res).await;
    Some((status, body))
}

fn proxy_v2_ipv4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8443u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_give_the_client_address_and_bad_headers_close() {
    let proxy = proxy_with(
        "proxy_protocol = true\ndeny = [\"198.51.100.66\"]",
        "allow = [\"203.0.113.0/24\"]",
    )
    .await;

    let v1 =
        get_after_proxy_header(&proxy, b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8443\r\n").await;
    let (status, body) = v1.expect("v1 header accepted");
    assert_eq!(
        status, 200,
        "the PROXY source is the client the route allows"
    );
    assert!(body.contains("x-forwarded-for: 203.0.113.9"), "{body}");

    let v2 = get_after_proxy_header(&proxy, &proxy_v2_ipv4([203, 0, 113, 10], 6000)).await;
    assert_eq!(v2.expect("v2 header accepted").0, 200);

    let outside = get_after_proxy_header(&proxy, &proxy_v2_ipv4([192, 0, 2, 1], 6000)).await;
    assert_eq!(
        outside.unwrap().0,
        403,
        "route allow list applies to the PROXY source"
    );

    let denied = get_after_proxy_header(&proxy, &proxy_v2_ipv4([198, 51, 100, 66], 6000)).await;
    assert!(
        denied.is_none(),
        "global deny list applies to the PROXY source, before TLS"
    );

    assert!(
        get_after_proxy_header(&proxy, b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n")
            .await
            .is_none()
    );
    assert!(
        get_after_proxy_header(&proxy, b"").await.is_none(),
        "plain TLS without a header is closed"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(
            r#"voxguard_admission_refusals_total{reason="proxy_protocol",route="_accept"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"voxguard_admission_refusals_total{reason="deny_list",route="_accept"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_loopback_client_is_admitted_by_its_own_address() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        backend,
        "",
        "allow = [\"::1\"]\nrate_limit = { per_ip = \"1/m\", burst = 1 }",
    )
    .replace(
        "listen = \"127.0.0.1:0\"\ndata_dir",
        "listen = \"[::1]:0\"\ndata_dir",
    );
    let proxy = spawn_proxy_with(dir, &text).await;
    assert!(proxy.tls.is_ipv6());
    let (status, body) = get_from("::1", proxy.tls, &proxy.ca_pem, "/headers", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: ::1"), "{body}");
    assert_eq!(
        get_from("::1", proxy.tls, &proxy.ca_pem, "/headers", &[])
            .await
            .unwrap()
            .0,
        429
    );
}
