//! The real binary: SIGTERM drain, SIGHUP reload, the admin listener.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::backend::spawn_backend;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{
    get, h1_over, https_get, https_post, read, tls_config, tls_over, ws_connect,
};
use crate::support::{admin_get, bin, config_text};

pub(crate) struct Running {
    pub(crate) child: Child,
    /// The stderr pipe, held open and unread (a log reader that stalled), when started so.
    stalled_stderr: Option<tokio::process::ChildStderr>,
    pub(crate) logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(crate) tls: std::net::SocketAddr,
    pub(crate) admin: std::net::SocketAddr,
    pub(crate) ca: Vec<u8>,
}

fn field(line: &str, name: &str) -> Option<std::net::SocketAddr> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    line[start..end].parse().ok()
}

/// Starts `voxguard run` with JSON logs and reads the bound addresses from its start-up line.
pub(crate) async fn start(config: &std::path::Path, data: &std::path::Path) -> Running {
    start_reading_logs(config, data, true).await
}

/// `start`, but stderr is left unread after the start-up line when `read_logs` is false.
async fn start_reading_logs(
    config: &std::path::Path,
    data: &std::path::Path,
    read_logs: bool,
) -> Running {
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .env("VOXGUARD_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut started = Vec::new();
    let (tls, admin) = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("voxguard started") {
                started.push(line.clone());
                return (
                    field(&line, "listen").unwrap(),
                    field(&line, "admin").unwrap(),
                );
            }
        }
        panic!("voxguard exited before starting");
    })
    .await
    .unwrap();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(started));
    let sink = logs.clone();
    let mut stalled_stderr = None;
    if read_logs {
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
    } else {
        stalled_stderr = Some(lines.into_inner().into_inner());
    }
    let ca = std::fs::read(data.join("dev-cert.pem")).unwrap();
    Running {
        child,
        stalled_stderr,
        logs,
        tls,
        admin,
        ca,
    }
}

/// SIGTERM, then the exit code once the drain is over.
pub(crate) async fn terminate(proxy: &mut Running) -> Option<i32> {
    signal(&proxy.child, "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    exit.code()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_refuses_new_connections_and_exits_0() {
    drains_on_sigterm("worker_threads = 2", 2).await;
}

/// One worker thread (what a sidecar limited to one CPU gets): the same request, drain and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_and_drains() {
    drains_on_sigterm("worker_threads = 1", 1).await;
}

async fn drains_on_sigterm(server_extra: &str, workers: usize) {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(dir.path(), backend, server_extra, "")).unwrap();
    let mut proxy = start(&path, &dir.path().join("data")).await;
    let started = proxy.logs.lock().unwrap()[0].clone();
    assert!(
        started.contains(&format!("\"worker_threads\":{workers}")),
        "{started}"
    );
    // One thread runs tokio's single-threaded scheduler; more run the work-stealing one.
    let scheduler = if workers == 1 {
        "single-threaded"
    } else {
        "multi-threaded"
    };
    assert!(
        started.contains(&format!("\"scheduler\":\"{scheduler}\"")),
        "{started}"
    );
    let (status, _, body) = https_get(proxy.tls, &proxy.ca, "/hello").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /hello "), "{body}");
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/ws", &[]).await.unwrap();
    ws.send(Message::text("echo me")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo me"));
    drop(ws);

    let (tls, ca) = (proxy.tls, proxy.ca.clone());
    let in_flight = tokio::spawn(async move { https_get(tls, &ca, "/slow").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&proxy.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ready, _) = admin_get(proxy.admin, "/readyz").await;
    assert_eq!(ready, 503, "readiness must turn false while draining");
    assert!(
        tokio::net::TcpStream::connect(proxy.tls).await.is_err(),
        "new connections must be refused while draining"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slow done"),
        "in-flight request completes"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// A burst of calls arriving while the proxy cannot accept them (its workers busy with
/// handshakes; here, the process stopped) waits in the kernel's accept queue and is then served.
/// With tokio's backlog of 128, Linux dropped the SYNs past the queue's end, and those callers'
/// connects waited a second for each retransmit. (Needs `net.core.somaxconn` ≥ 400; Linux's default
/// has been 4096 since 5.4.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_in_the_queue_while_the_proxy_is_busy() {
    const BURST: usize = 400;
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(dir.path(), backend, "", "")).unwrap();
    let proxy = start(&path, &dir.path().join("data")).await;

    signal(&proxy.child, "-STOP");
    // A dropped SYN is retried after 1 s and again 2 s later, and dropped again while the proxy
    // is stopped: a connection not queued is still connecting at 3 s.
    let connects = (0..BURST).map(|_| {
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(proxy.tls),
        )
    });
    let connected: Vec<_> = futures_util::future::join_all(connects)
        .await
        .into_iter()
        .filter_map(|c| c.ok()?.ok())
        .collect();
    signal(&proxy.child, "-CONT");
    assert_eq!(
        connected.len(),
        BURST,
        "every connection of the burst is queued by the kernel"
    );

    let cfg = tls_config(&[&proxy.ca], &[b"http/1.1"], &[&rustls::version::TLS13]);
    let served = connected.into_iter().map(|tcp| {
        let cfg = cfg.clone();
        async move {
            let tls = tls_over(tcp, cfg).await.ok()?;
            let res = h1_over(tls).await.send_request(get("/hello")).await.ok()?;
            Some(read(res).await.0)
        }
    });
    let statuses = futures_util::future::join_all(served).await;
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    assert_eq!(ok, BURST, "every queued connection is served: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_a_bad_reload_keeps_the_running_config() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let base = config_text(dir.path(), backend, "", "")
        .replace("path_prefix = \"/\"", "path_prefix = \"/a\"");
    std::fs::write(&path, &base).unwrap();
    let mut proxy = start(&path, &dir.path().join("data")).await;
    assert_eq!(https_get(proxy.tls, &proxy.ca, "/b/headers").await.0, 404);

    let with_b =
        format!("{base}\n[[route]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"voice\"\n");
    std::fs::write(&path, with_b).unwrap();
    signal(&proxy.child, "-HUP");
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = https_get(proxy.tls, &proxy.ca, "/b/headers").await.0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the new route is served after SIGHUP");

    std::fs::write(&path, "[server]\nlistn = \"typo\"\n").unwrap();
    signal(&proxy.child, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        https_get(proxy.tls, &proxy.ca, "/b/headers").await.0,
        200,
        "bad reload keeps the old config"
    );
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_config_reloads_total{outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_config_reloads_total{outcome="error"} 1"#),
        "{metrics}"
    );
    assert_eq!(terminate(&mut proxy).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_readiness_and_metrics() {
    let proxy = crate::support::spawn_proxy(spawn_backend().await, "", "").await;
    assert_eq!(
        admin_get(proxy.admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        admin_get(proxy.admin, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(
        https_get(proxy.tls, &proxy.ca_pem, "/headers?token=secret")
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"voxguard_http_requests_total{route="default",status="2xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"voxguard_http_request_duration_seconds_count{route="default"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("voxguard_active_connections"), "{metrics}");
    assert!(!metrics.contains("127.0.0.1"), "no addresses in labels");
    assert!(!metrics.contains("/headers"), "no paths in labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_without_path_or_query() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(dir.path(), backend, "", "")).unwrap();
    let mut proxy = start(&path, &dir.path().join("data")).await;
    let status = https_get(
        proxy.tls,
        &proxy.ca,
        "/headers?token=s3cr3t-t0ken&from=%2B15551234567",
    )
    .await
    .0;
    assert_eq!(status, 200);
    assert_eq!(terminate(&mut proxy).await, Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = proxy.logs.lock().unwrap().join("\n");
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("voxguard::access"))
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    for field in [
        r#""route":"default""#,
        r#""method":"GET""#,
        r#""status":200"#,
        r#""client":"127.0.0.1""#,
        r#""bytes":"#,
        r#""duration_ms":"#,
    ] {
        assert!(access[0].contains(field), "missing {field}: {}", access[0]);
    }
    assert!(
        !logs.contains("s3cr3t"),
        "query strings must not be logged: {logs}"
    );
    assert!(!logs.contains("15551234567"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = config_text(dir.path(), backend, "", "")
        .replace("grace_period = \"2s\"", "grace_period = \"60s\"");
    std::fs::write(&path, text).unwrap();
    let mut proxy = start(&path, &dir.path().join("data")).await;
    // An open WebSocket session keeps the drain waiting for the whole grace period.
    let (_ws, _) = crate::support::client::ws_connect(proxy.tls, &proxy.ca, "/ws", &[])
        .await
        .unwrap();
    signal(&proxy.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "still draining after the first signal"
    );
    signal(&proxy.child, "-INT");
    let exit = tokio::time::timeout(Duration::from_secs(5), proxy.child.wait())
        .await
        .expect("the second signal exits at once")
        .unwrap();
    assert_eq!(exit.code(), Some(130));
    // Logs are written by their own thread: the exit waits for the line that explains it.
    let said = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if proxy
                .logs
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("second signal: exiting now"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(said.is_ok(), "{:?}", proxy.logs.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colour_codes_when_not_on_a_terminal() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(dir.path(), backend, "", "")).unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("voxguard started") {
                return line;
            }
        }
        panic!("voxguard exited before starting");
    })
    .await
    .unwrap();
    assert!(
        !started.contains('\u{1b}'),
        "ANSI escape in a piped log: {started:?}"
    );
    assert!(started.contains("INFO"), "{started}");
}

/// The GitHub signature header value for `body` under `secret`, from the proxy's own scheme code.
fn github_signature(secret: &str, body: &[u8]) -> String {
    use voxguard::admission::signature::{SignatureScheme, SignedRequest, github::github};
    let headers = http::HeaderMap::new();
    let req = SignedRequest {
        method: &http::Method::POST,
        url: "",
        headers: &headers,
        body,
        now: 0,
    };
    github().sign(&req, secret.as_bytes()).unwrap()[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_by_sighup_and_refusals_logged_without_signature_or_secret() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (old_file, new_file) = (dir.path().join("old.secret"), dir.path().join("new.secret"));
    std::fs::write(&old_file, "old-secret-value\n").unwrap();
    std::fs::write(&new_file, "new-secret-value\n").unwrap();
    let path = dir.path().join("proxy.toml");
    let with_secrets = |files: &[&std::path::Path]| {
        let list: Vec<String> = files
            .iter()
            .map(|f| format!("{:?}", f.display().to_string()))
            .collect();
        let route = format!(
            "[route.webhook]\nscheme = \"github\"\nsecret_file = [{}]\n",
            list.join(", ")
        );
        config_text(dir.path(), backend, "", &route)
    };
    std::fs::write(&path, with_secrets(&[&old_file])).unwrap();
    let mut proxy = start(&path, &dir.path().join("data")).await;
    let (tls, ca) = (proxy.tls, proxy.ca.clone());
    let post = |secret: &str, body: &'static [u8]| {
        let sig = github_signature(secret, body);
        let ca = ca.clone();
        async move {
            https_post(tls, &ca, "/headers", &[("x-hub-signature-256", &sig)], body)
                .await
                .0
        }
    };
    assert_eq!(post("old-secret-value", b"{\"n\":1}").await, 200);
    assert_eq!(
        post("new-secret-value", b"{\"n\":2}").await,
        403,
        "not configured yet"
    );

    // Rotation: both verify while the provider moves over...
    std::fs::write(&path, with_secrets(&[&new_file, &old_file])).unwrap();
    signal(&proxy.child, "-HUP");
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = post("new-secret-value", b"{\"n\":3}").await;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the new secret verifies after SIGHUP");
    assert_eq!(
        post("old-secret-value", b"{\"n\":4}").await,
        200,
        "the old one still does"
    );
    assert_eq!(
        post("old-secret-value", b"{\"n\":4}").await,
        409,
        "and the replay cache survived the reload"
    );

    // ...then only the new one.
    std::fs::write(&path, with_secrets(&[&new_file])).unwrap();
    signal(&proxy.child, "-HUP");
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = post("old-secret-value", b"{\"n\":5}").await;
        if status == 403 {
            break;
        }
    }
    assert_eq!(status, 403, "the retired secret no longer verifies");
    assert_eq!(post("new-secret-value", b"{\"n\":6}").await, 200);
    let forged = format!("sha256={}", "e".repeat(64));
    assert_eq!(
        https_post(
            tls,
            &proxy.ca,
            "/headers",
            &[("x-hub-signature-256", &forged)],
            b"{}"
        )
        .await
        .0,
        403
    );

    assert_eq!(terminate(&mut proxy).await, Some(0));
    let logs = proxy.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("webhook refused") && logs.contains("\"reason\":\"mismatch\""),
        "{logs}"
    );
    let leaked = [
        "e".repeat(64),
        github_signature("old-secret-value", b"{\"n\":5}")[7..].to_string(),
        "old-secret-value".into(),
        "new-secret-value".into(),
    ];
    for secret_thing in leaked {
        assert!(
            !logs.contains(&secret_thing),
            "logs leak {secret_thing}: {logs}"
        );
    }
}

/// Nobody reads the proxy's stderr after start (a stalled log collector): the pipe fills with
/// access lines, and requests must still be answered. Lines that do not fit are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_never_stalls_requests() {
    let backend = spawn_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(dir.path(), backend, "", "")).unwrap();
    let proxy = start_reading_logs(&path, &dir.path().join("data"), false).await;
    assert!(proxy.stalled_stderr.is_some());
    // One access line (~300 bytes of JSON) per request: the 64 KiB pipe holds ~200 of them and
    // the log queue 4096, so this many overflow both.
    const REQUESTS: usize = 6000;
    const CONNECTIONS: usize = 8;
    let (tls, ca) = (proxy.tls, proxy.ca.clone());
    let answered = tokio::time::timeout(Duration::from_secs(60), async move {
        let clients = (0..CONNECTIONS).map(|_| {
            let ca = ca.clone();
            tokio::spawn(async move {
                let mut send = crate::support::client::h1(tls, &ca).await;
                let mut ok = 0;
                for _ in 0..REQUESTS / CONNECTIONS {
                    let res = send
                        .send_request(crate::support::client::get("/hello"))
                        .await
                        .unwrap();
                    let (status, _, _) = crate::support::client::read(res).await;
                    ok += usize::from(status == 200);
                }
                ok
            })
        });
        let mut answered = 0;
        for c in clients {
            answered += c.await.unwrap();
        }
        answered
    })
    .await
    .expect("requests are answered while nobody reads the log");
    assert_eq!(answered, REQUESTS);
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("voxguard_log_lines_dropped_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap();
    assert!(dropped > 0, "{dropped}");
}
