//! Test harness: the proxy in-process (or as the real binary), a real backend, real TLS clients.
//! Everything listens on 127.0.0.1:0.

pub mod audio;
pub mod backend;
pub mod client;
pub mod recorder;
pub mod sdk;
pub mod ws_backend;

use std::net::SocketAddr;
use std::path::PathBuf;

use voxguard::{App, Config};

/// A running proxy and what a test needs to talk to it.
pub struct TestProxy {
    pub app: App,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    pub ca_pem: Vec<u8>,
    pub dir: tempfile::TempDir,
}

/// Base config: listeners on port 0, data dir in a temp dir, upstream `voice` → `backend`,
/// one catch-all route with WebSockets. `extra` is appended (more upstreams/routes, or overrides
/// via `server_extra`).
pub fn config_text(
    dir: &std::path::Path,
    backend: SocketAddr,
    server_extra: &str,
    route_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
grace_period = "2s"
{server_extra}

[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "voice"
url = "http://{backend}"
connect_timeout = "1s"
response_timeout = "2s"

[[route]]
name = "default"
path_prefix = "/"
upstream = "voice"
websocket = true
{route_extra}
"#,
        data = dir.join("data").display(),
    )
}

pub async fn spawn_proxy(backend: SocketAddr, server_extra: &str, route_extra: &str) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), backend, server_extra, route_extra);
    spawn_proxy_with(dir, &text).await
}

pub async fn spawn_proxy_with(dir: tempfile::TempDir, text: &str) -> TestProxy {
    spawn_proxy_env(dir, text, &|_| None).await
}

/// With an environment for `*_env` references (secrets).
pub async fn spawn_proxy_env(
    dir: tempfile::TempDir,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> TestProxy {
    voxguard::install_crypto_provider();
    let config = Config::parse(text, "test.toml", env).expect("test config is valid");
    let app = App::start(&config).await.expect("proxy starts");
    let ca_pem = std::fs::read(&app.addrs.cert_file).unwrap();
    TestProxy {
        tls: app.addrs.tls,
        admin: app.addrs.admin,
        app,
        ca_pem,
        dir,
    }
}

/// A listener for a test backend on a loopback port, with the proxy's own backlog: tokio's 128
/// overflows when a test opens a burst of calls, and a dropped SYN costs the proxy's connect a
/// second, past the tests' 1 s `connect_timeout`.
pub fn backend_listener() -> tokio::net::TcpListener {
    voxguard::net::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxguard"))
}

/// GET on the admin listener, returning the body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = client::plain_request(admin, http::Method::GET, path).await;
    (status, body)
}

/// Runs the real binary with `args` and `--config config`: exit code, stdout, stderr.
pub fn cli(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `voxguard_…` metric name in `text` (histogram `_bucket` suffixes dropped).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("voxguard_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name.trim_end_matches("_bucket").to_string());
    }
    names
}

/// A real tmpfs of `size` mounted at `path` for the test's lifetime (needs root, as CI runs: the
/// test fails rather than pass without the fault it is about).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        Self::run(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            &path.display().to_string(),
        ]);
        Tmpfs(path.to_path_buf())
    }

    /// Remounts read-only (`false`) or read-write (`true`).
    pub fn set_writable(&self, writable: bool) {
        let opt = if writable { "remount,rw" } else { "remount,ro" };
        Self::run(&["-o", opt, &self.0.display().to_string()]);
    }

    fn run(args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?} failed (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
