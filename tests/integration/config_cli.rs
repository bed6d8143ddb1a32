//! `voxguard check` / `run` on good and broken configs, and the shipped proxy.toml.

use std::process::Command;

use crate::support::bin;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_proxy_toml_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let config =
        voxguard::Config::load(path.as_ref(), &|_| None).expect("shipped proxy.toml parses");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(
        config.upstreams[0].url.to_string(),
        "http://127.0.0.1:8080/"
    );
    assert_eq!(config.server.data_dir, std::path::PathBuf::from("data"));
    let out = Command::new(bin())
        .args(["check", "--config", path])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:8443\""));
}

#[test]
fn a_typo_is_refused_with_the_key_named_and_exit_64() {
    let (code, _, err) = check("[server]\nlistn = \"127.0.0.1:8443\"\n");
    assert_eq!(code, 64);
    assert!(err.contains("unknown field `listn`"), "{err}");
}

#[test]
fn every_invalid_key_is_reported_with_its_path() {
    let (code, _, err) = check(
        r#"
[server]
grace_period = "forever"
[[upstream]]
name = "voice"
url = "http://127.0.0.1:8080"
[[route]]
path_prefix = "/"
upstream = "voice"
[[route]]
path_prefix = "/x"
upstream = "voic"
"#,
    );
    assert_eq!(code, 64);
    assert!(
        err.contains("route[1].upstream: no upstream named \"voic\""),
        "{err}"
    );
    assert!(
        err.contains("server.grace_period: invalid duration"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[[route]]\nupstream = \"nowhere\"\n").unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("route[0].upstream: no upstream named \"nowhere\"")
    );
}

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("voxguard "));
    let out = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}
