//! The providers' official Python SDKs (tests/webhook_sdk/sign.py in the virtualenv that `.ci/test`
//! creates), signing requests as the providers would.

use std::path::PathBuf;

/// The virtualenv's interpreter: `VOXGUARD_SDK_PYTHON`, else `target/sdk-venv/bin/python`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("VOXGUARD_SDK_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} not found: run .ci/test (it creates the SDK virtualenv from tests/webhook_sdk/requirements.txt)",
        path.display()
    );
    path
}

/// A request as the SDK signed it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub url: String,
}

impl Signed {
    /// The path and query of the signed URL (what the client sends to the proxy).
    pub fn path_and_query(&self) -> String {
        let after_scheme = self.url.split_once("://").unwrap().1;
        let at = after_scheme.find('/').unwrap();
        after_scheme[at..].to_string()
    }
}

/// Signs with the SDK: `request` has scheme, secret, url, and body or params, timestamp, id.
pub async fn sign(request: serde_json::Value) -> Signed {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_sdk/sign.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "sign.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Signed {
        headers: v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
            .collect(),
        body: v["body"].as_str().unwrap().into(),
        url: v["url"].as_str().unwrap().into(),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
