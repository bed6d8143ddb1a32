//! Operational faults on the real binary: an audit directory that is read-only or fills up,
//! configuration reloads under load, SIGTERM under load. (A recordings directory on a full tmpfs is
//! in `recording.rs`; a certificate replaced by garbage in `tls.rs`; a reload with an error in
//! `lifecycle.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::lifecycle::{Running, start, terminate};
use crate::support::backend::spawn_backend;
use crate::support::client::{get, h1, read, ws_connect};
use crate::support::{Tmpfs, admin_get, bin, config_text};

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sighup(proxy: &Running) {
    let pid = proxy.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_audit_dir_stops_the_start_and_a_full_one_loses_nothing_silently() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Tmpfs::mount(&dir.path().join("audit"), "256k");
    let audit_key = format!("\n[audit]\ndir = {:?}\n", audit.0.display().to_string());
    let text = config_text(dir.path(), spawn_backend().await, "", "") + &audit_key;
    let config = write_config(dir.path(), &text);

    audit.set_writable(false);
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("audit.dir") && stderr.contains("Read-only file system"),
        "{stderr}"
    );

    audit.set_writable(true);
    let mut proxy = start(&config, &dir.path().join("data")).await;
    // At run time the filesystem fills up (a read-only remount is refused while the log is open).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filler = audit.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    // Audited events while nothing can be written: WebSocket sessions starting and ending.
    // (30 sessions: the first few lines may still fit in the log file's last page.)
    for _ in 0..30 {
        let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/ws", &[]).await.unwrap();
        let _ = ws.close(None).await;
    }
    let (status, _, _) = crate::support::client::https_get(proxy.tls, &proxy.ca, "/headers").await;
    assert_eq!(status, 200, "the proxy keeps serving");
    let mut lost = 0;
    for _ in 0..50 {
        let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
        lost = metrics
            .lines()
            .find_map(|l| l.strip_prefix("voxguard_audit_dropped_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if lost >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lost >= 10, "unwritten lines are counted (got {lost})");

    std::fs::remove_file(&filler).unwrap();
    let (mut ws, _) = ws_connect(proxy.tls, &proxy.ca, "/ws", &[]).await.unwrap();
    let _ = ws.close(None).await;
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_dir(&audit.0)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .filter(|t| !t.starts_with('\0'))
            .collect();
        if text.contains("\"event\":\"audit_dropped\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("\"event\":\"audit_dropped\""),
        "the gap is reported in the log once it can be written: {text}"
    );
    assert_eq!(terminate(&mut proxy).await, Some(0));
}

/// Clients sending GETs back to back (keep-alive, and a new connection every 10th request) until
/// `stop`; returns (ok, failed).
fn load(
    proxy: &Running,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..clients)
        .map(|_| {
            let (addr, ca, stop) = (proxy.tls, proxy.ca.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let mut send = h1(addr, &ca).await;
                    for _ in 0..10 {
                        let status = match send.send_request(get("/headers")).await {
                            Ok(res) => read(res).await.0,
                            Err(_) => 0,
                        };
                        if status == 200 {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let backend = spawn_backend().await;
    let base = config_text(dir.path(), backend, "", "");
    let extra = "\n[[route]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"voice\"\n";
    let config = write_config(dir.path(), &base);
    let mut proxy = start(&config, &dir.path().join("data")).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(&proxy, 4, stop.clone());
    for i in 0..20 {
        // Alternate between two valid configs so each reload really changes the route table.
        let text = if i % 2 == 0 {
            format!("{base}{extra}")
        } else {
            base.clone()
        };
        std::fs::write(&config, text).unwrap();
        sighup(&proxy);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    let (_, metrics) = admin_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"voxguard_config_reloads_total{outcome="ok"} 20"#),
        "{metrics}"
    );
    eprintln!("{ok} requests during 20 reloads, {failed} failed");
    assert!(ok > 100, "the load ran ({ok})");
    assert_eq!(failed, 0);
    assert_eq!(terminate(&mut proxy).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_in_flight_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config_text(dir.path(), spawn_backend().await, "", ""),
    );
    let mut proxy = start(&config, &dir.path().join("data")).await;
    // 20 slow requests (the backend answers after 1.5 s) are in flight when SIGTERM arrives.
    let sent = Arc::new(AtomicU64::new(0));
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let (addr, ca, sent) = (proxy.tls, proxy.ca.clone(), sent.clone());
            tokio::spawn(async move {
                let mut send = h1(addr, &ca).await;
                let pending = send.send_request(get("/slow"));
                sent.fetch_add(1, Ordering::Relaxed);
                match pending.await {
                    Ok(res) => read(res).await.0,
                    Err(_) => 0,
                }
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the requests have reached the backend
    let pid = proxy.child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut statuses = Vec::new();
    for s in slow {
        statuses.push(s.await.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
