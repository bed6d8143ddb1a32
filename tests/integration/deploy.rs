//! Deployment material, checked offline: the systemd unit passes `systemd-analyze verify`, the
//! Dockerfile's `COPY` sources exist, and the Grafana dashboard is valid JSON whose queries use only
//! metric names a live `/metrics` scrape shows.

use std::path::Path;

use crate::support::backend::spawn_backend;
use crate::support::client::https_get;
use crate::support::{admin_get, spawn_proxy};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not on this machine: skipped, as the issue allows");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/voxguard.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(directive), "{directive}");
    }
    // Verify with the binary this build made in place of the installed path.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voxguard.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/voxguard",
            crate::support::bin().to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("voxguard.service:"),
        "{err}"
    );
}

#[test]
fn the_dockerfile_copies_files_that_exist() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile")).unwrap();
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "{line}: {src} is missing"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
    assert!(text.contains("USER nonroot"), "runs as non-root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exported_metrics() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/voxguard-dashboard.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            names.extend(crate::support::metric_names(
                target["expr"].as_str().unwrap(),
            ));
        }
    }
    assert!(names.len() >= 10, "{names:?}");

    // A live scrape after a request (labelled families appear once a label set is used).
    let backend = spawn_backend().await;
    let proxy = spawn_proxy(backend, "", "").await;
    assert_eq!(https_get(proxy.tls, &proxy.ca_pem, "/headers").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, scrape) = admin_get(proxy.admin, "/metrics").await;
    // The served certificate's expiry is exported, in the future (the dev certificate).
    let not_after: i64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("voxguard_tls_certificate_not_after_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(not_after > now + 86_400, "{not_after}");
    let declared = std::fs::read_to_string(Path::new(ROOT).join("src/metrics.rs")).unwrap();
    for name in &names {
        // Families with labels appear in a scrape once a label set was used; the rest always do.
        let in_scrape = scrape
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")));
        let declared_here = declared.contains(&format!("\"{name}\""));
        assert!(declared_here, "{name} is not a metric voxguard exports");
        if [
            "voxguard_http_requests_total",
            "voxguard_http_request_duration_seconds",
            "voxguard_active_connections",
            "voxguard_bans_active",
            "voxguard_websocket_sessions_active",
            "voxguard_recording_bytes_written_total",
            "voxguard_audit_dropped_total",
            "voxguard_recordings_failed_total",
        ]
        .contains(&name.as_str())
        {
            assert!(in_scrape, "{name} is not in the live scrape:\n{scrape}");
        }
    }
}
