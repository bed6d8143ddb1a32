//! The load harness (`benches/load`, example `voxguard-load`) through a real proxy: it must count
//! what it claims, since benches/compare.sh and docs/PERFORMANCE.md rest on its numbers. These tests
//! check counts and errors, never speed.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::support::{self, ws_backend};

/// `cargo test` and nextest build examples beside the test binary's `deps` directory.
fn harness() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join("voxguard-load");
    assert!(path.exists(), "{} is built with the tests", path.display());
    path
}

struct Backend {
    child: Child,
    http: String,
    ws: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend() -> Backend {
    let mut child = Command::new(harness())
        .arg("backend")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |prefix: &str| {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(prefix).unwrap().to_string()
    };
    let http = addr("http ");
    let ws = addr("ws ");
    Backend { child, http, ws }
}

/// Runs a load mode to completion (off the async runtime, which keeps serving the proxy).
async fn run(args: Vec<String>) -> serde_json::Value {
    let out =
        tokio::task::spawn_blocking(move || Command::new(harness()).args(&args).output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `ws` mode: four calls paced at 50 messages/s each, measured for 1 s after `warmup`.
fn four_paced_calls(url: &str, warmup: &str, ramp: &str) -> Vec<String> {
    args(&[
        "ws",
        "--url",
        url,
        "--calls",
        "4",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--warmup",
        warmup,
        "--ramp",
        ramp,
    ])
}

async fn proxy_for(backend: &Backend, media: &str) -> support::TestProxy {
    let http: std::net::SocketAddr = backend.http.parse().unwrap();
    let extra = format!(
        "[[upstream]]\nname = \"media\"\nurl = \"http://{}\"\n[[route]]\nname = \"stream\"\npath_prefix = \"/stream\"\nupstream = \"media\"\nwebsocket = true\n{media}",
        backend.ws
    );
    support::spawn_proxy(http, "", &extra).await
}

/// Two connections POSTing 2 KB forms to `url`.
fn post_args(url: &str) -> Vec<String> {
    args(&[
        "http",
        "--url",
        url,
        "--connections",
        "2",
        "--post-bytes",
        "2048",
    ])
}

fn ca_file(p: &support::TestProxy) -> String {
    let path = p.dir.path().join("ca.pem");
    std::fs::write(&path, &p.ca_pem).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_counts_requests_and_reads_the_proxy_cpu() {
    let b = backend();
    let p = proxy_for(&b, "").await;
    let url = format!("https://{}/", p.tls);
    let pid = std::process::id().to_string();
    let common = [
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--ca",
        &ca_file(&p),
        "--pid",
        &pid,
    ];
    let mut get = args(&["http", "--url", &url, "--connections", "4"]);
    get.extend(args(&common));
    let r = run(get).await;
    assert_eq!(r["mode"], "http_get");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(r["p50_us"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["proxy_cpu_s"].as_f64().unwrap() > 0.0,
        "the proxy's CPU is read: {r}"
    );

    // HTTP/2: the harness refuses a connection that did not negotiate h2, so requests counted
    // without errors went over HTTP/2.
    let mut h2 = args(&["http", "--h2", "--url", &url, "--connections", "4"]);
    h2.extend(args(&common));
    let r = run(h2).await;
    assert_eq!(r["mode"], "http2_get");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    let plain = format!("http://{}/", b.http);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(harness())
            .args(["http", "--h2", "--url", &plain, "--duration", "1s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "h2 without TLS is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP/2 is negotiated by TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut post = post_args(&url);
    post.extend(args(&["--sign-github", "s", "--new-connections"]));
    post.extend(args(&common));
    let r = run(post).await;
    assert_eq!(r["mode"], "http_new_connection");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
}

/// The harness signs as GitHub and as Twilio do (its own signing code, not the proxy's), and the
/// proxy's webhook routes accept every request: compare.sh's signed rows rest on this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_posts_pass_github_and_twilio_webhook_routes_and_a_wrong_secret_is_counted() {
    let b = backend();
    let http: std::net::SocketAddr = b.http.parse().unwrap();
    let schemes = [
        ("github", "", &["--sign-github"][..], "http_signed_post"),
        // compare.sh's HTTP/2 signed row.
        (
            "github",
            "",
            &["--h2", "--sign-github"][..],
            "http2_signed_post",
        ),
        (
            "twilio",
            "\npublic_url = \"https://voice.example.com\"",
            &["--public-url", "https://voice.example.com", "--sign-twilio"][..],
            "http_twilio_post",
        ),
    ];
    for (scheme, webhook_extra, flags, mode) in schemes {
        let dir = tempfile::tempdir().unwrap();
        let webhook =
            format!("[route.webhook]\nscheme = \"{scheme}\"\nsecret_env = \"HOOK\"{webhook_extra}");
        let text = support::config_text(dir.path(), http, "", &webhook);
        let p =
            support::spawn_proxy_env(dir, &text, &|k| (k == "HOOK").then(|| "hook-secret".into()))
                .await;
        let url = format!("https://{}/hook", p.tls);
        let ca = ca_file(&p);
        let signed = |secret: &str| {
            let mut a = post_args(&url);
            a.extend(args(&[
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--ca",
                &ca,
            ]));
            a.extend(args(flags));
            a.push(secret.to_string());
            a
        };
        let good = run(signed("hook-secret")).await;
        assert_eq!(good["mode"], mode);
        assert_eq!(
            good["errors"], 0,
            "{scheme}: every body is unique, so none is a replay: {good}"
        );
        assert!(good["ops"].as_u64().unwrap() > 0, "{scheme}: {good}");
        let bad = run(signed("wrong")).await;
        assert_eq!(bad["ops"], 0, "{scheme}: {bad}");
        assert!(
            bad["errors"].as_u64().unwrap() > 0,
            "{scheme}: 403s are errors: {bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_mode_round_trips_every_message_through_the_media_pipeline() {
    let b = backend();
    let p = proxy_for(&b, "[route.media]\nprotocol = \"twilio\"").await;
    let url = format!("wss://{}/stream", p.tls);
    let pid = std::process::id().to_string();
    let mut list = four_paced_calls(&url, "500ms", "200ms");
    list.extend(args(&[
        "--hold-frames",
        "4",
        "--ca",
        &ca_file(&p),
        "--pid",
        &pid,
    ]));
    let r = run(list).await;
    assert_eq!(r["mode"], "ws_paced");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["sent"], r["received"], "{r}");
    // 4 calls at 50 messages/s for the 1 s measured: never more (a tick at each end aside).
    let ops = r["ops"].as_u64().unwrap();
    assert!((100..=220).contains(&ops), "paced, not flat out: {r}");
    // The media route holds forwarded audio 40 ms each way, and the harness sees it.
    assert!(r["p50_us"].as_u64().unwrap() >= 80_000, "{r}");
    // Counted from the send of the fourth frame after each one (the one that completes its hold),
    // the round trip leaves the 80 ms out; the generator reports its own lateness apart.
    let after_hold = r["after_hold_p50_us"].as_u64().unwrap();
    assert!(after_hold + 60_000 < r["p50_us"].as_u64().unwrap(), "{r}");
    assert!(r["send_late_p99_us"].is_u64(), "{r}");
    // Every round trip took the 80 ms hold, over the default 20 ms bound: each of the measured
    // second's ten windows is in the tail, and holds all of the over-bound round trips.
    assert_eq!(r["tail_bound_us"], 20_000, "{r}");
    assert_eq!(r["windows"], 10, "{r}");
    assert_eq!(r["tail_windows"], 10, "{r}");
    assert_eq!(r["over_bound"], r["ops"], "{r}");
    assert_eq!(r["over_bound_in_tail_windows"], 1.0, "{r}");
    // Under a bound no round trip reaches, no window is.
    let mut list = four_paced_calls(&url, "500ms", "200ms");
    list.extend(args(&["--tail-bound", "10s", "--ca", &ca_file(&p)]));
    let calm = run(list).await;
    assert_eq!(calm["errors"], 0, "{calm}");
    assert_eq!(calm["windows"], 10, "{calm}");
    assert_eq!(calm["tail_windows"], 0, "{calm}");
    assert_eq!(calm["over_bound"], 0, "{calm}");
    assert!(calm["over_bound_in_tail_windows"].is_null(), "{calm}");

    let flat = run(args(&[
        "ws",
        "--url",
        &url,
        "--calls",
        "2",
        "--rate",
        "0",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--ramp",
        "100ms",
        "--mark-every",
        "5",
        "--ca",
        &ca_file(&p),
    ]))
    .await;
    assert_eq!(flat["mode"], "ws_flat");
    assert_eq!(flat["mark_every"], 5, "{flat}");
    // A voice agent's marks went through the media pipeline both ways: one after every fifth of
    // each call's media messages, and back with the echo.
    let (_, metrics) = support::admin_get(p.admin, "/metrics").await;
    let marks: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("voxguard_media_messages_total{") && l.contains("kind=\"mark\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let sent = flat["sent"].as_u64().unwrap();
    assert!(
        marks.abs_diff(2 * sent / 5) <= 4,
        "marks {marks} for {sent} media messages"
    );
    assert_eq!(
        (flat["errors"].as_u64(), flat["lost"].as_u64()),
        (Some(0), Some(0)),
        "{flat}"
    );
    assert!(flat["ops"].as_u64().unwrap() > ops, "{flat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_never_come_back_are_counted_lost() {
    // A backend that records and never echoes.
    let sink = ws_backend::spawn_ws_backend().await;
    let r = run(args(&[
        "ws",
        "--url",
        &format!("ws://{}/", sink.addr),
        "--calls",
        "2",
        "--rate",
        "50",
        "--duration",
        "500ms",
        "--warmup",
        "200ms",
        "--ramp",
        "100ms",
        "--drain",
        "200ms",
    ]))
    .await;
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent > 0, "{r}");
    assert_eq!(r["lost"].as_u64(), Some(sent), "{r}");
    assert_eq!(r["ops"], 0, "{r}");
}

/// The load side's CPU (the generator's own and the `--load-pid` processes', compare.sh's backend)
/// is reported per second of the window: near 1.0 on the one core compare.sh gives them, their own
/// delays, not the proxy's, set the tail. A process that burns a core, named with `--load-pid`,
/// shows in it; left out, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_sides_cpu_counts_the_load_pids() {
    let echo = backend();
    let url = format!("ws://{}/stream", echo.ws);
    let mut burner = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let load = |extra: &[&str]| {
        let mut list = four_paced_calls(&url, "300ms", "100ms");
        list.extend(args(extra));
        run(list)
    };
    let burner_pid = burner.id().to_string();
    let with = load(&["--load-pid", &burner_pid]).await;
    let without = load(&[]).await;
    let _ = burner.kill();
    let _ = burner.wait();
    let busy = |r: &serde_json::Value| r["load_cpu_busy"].as_f64().expect("always reported");
    assert!(busy(&with) >= 0.5, "a busy loop is most of a core: {with}");
    assert!(busy(&without) < 0.5, "four paced calls are not: {without}");
}

/// `http --idle` holds its connections open and idle through the run, and counts one the proxy
/// closed meanwhile as an error: compare.sh's memory per idle keep-alive connection rests on every
/// connection still being open when the proxy's RSS is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_idle_mode_holds_every_connection_and_counts_those_the_proxy_closed() {
    let b = backend();
    let http: std::net::SocketAddr = b.http.parse().unwrap();
    let pid = std::process::id().to_string();
    let idle = |p: &support::TestProxy| {
        let url = format!("https://{}/", p.tls);
        let ca = ca_file(p);
        args(&[
            "http",
            "--url",
            &url,
            "--idle",
            "--connections",
            "8",
            "--duration",
            "1s",
            "--warmup",
            "400ms",
            "--ca",
            &ca,
            "--pid",
            &pid,
        ])
    };

    let patient = support::spawn_proxy(http, "", "").await;
    let r = run(idle(&patient)).await;
    assert_eq!(r["mode"], "http_idle");
    assert_eq!(
        (r["ops"].as_u64(), r["errors"].as_u64()),
        (Some(8), Some(0)),
        "{r}"
    );
    assert!(r["rss_per_connection_kib"].is_number(), "{r}");

    // A proxy that closes a connection after 300 ms of quiet closes all eight during the run.
    let hasty = support::spawn_proxy(http, "keepalive_timeout = \"300ms\"\n", "").await;
    let r = run(idle(&hasty)).await;
    assert_eq!(
        (r["ops"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(8)),
        "{r}"
    );
}
