//! `voxguard webhook sign|verify` and `check` on signed routes, with the real binary: what `sign`
//! prints is what the proxy accepts, `verify` exits 0/1 with the reason, and secrets never print.

use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::client::{h1, read};
use crate::support::recorder::spawn_recorder;
use crate::support::{bin, config_text, spawn_proxy_env};

const SECRET: &str = "It's a Secret to Everybody";

fn voxguard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env("TWILIO_AUTH_TOKEN", "12345")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sign_prints_is_what_the_proxy_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("push.json");
    std::fs::write(&body_file, "{\"ref\":\"refs/heads/main\"}").unwrap();
    let (code, out, err) = voxguard(&[
        "webhook",
        "sign",
        "--scheme",
        "github",
        "--secret-env",
        "GITHUB_WEBHOOK_SECRET",
        "--body-file",
        body_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (name, value) = out.trim().split_once(": ").unwrap();
    assert_eq!(name, "x-hub-signature-256");

    let (backend, recorder) = spawn_recorder().await;
    let route = "[[route]]\nname = \"github\"\npath_prefix = \"/github\"\nupstream = \"voice\"\n[route.webhook]\nscheme = \"github\"\nsecret_env = \"GITHUB_WEBHOOK_SECRET\"\n";
    let text = format!("{}\n{route}", config_text(dir.path(), backend, "", ""));
    let env = |k: &str| (k == "GITHUB_WEBHOOK_SECRET").then(|| SECRET.to_string());
    let proxy = spawn_proxy_env(tempfile::tempdir().unwrap(), &text, &env).await;
    for (sig, expected) in [(value.to_string(), 200), (value.replace('a', "b"), 403)] {
        let mut conn = h1(proxy.tls, &proxy.ca_pem).await;
        let req = Request::post("/github/push")
            .header("host", "localhost")
            .header(name, sig)
            .body(
                Full::new(Bytes::from_static(b"{\"ref\":\"refs/heads/main\"}"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let (status, _, _) = read(conn.send_request(req).await.unwrap()).await;
        assert_eq!(status, expected);
    }
    assert_eq!(recorder.requests().len(), 1);
}

#[test]
fn verify_exits_0_or_1_with_the_reason() {
    let base = [
        "webhook",
        "verify",
        "--scheme",
        "twilio",
        "--secret-env",
        "TWILIO_AUTH_TOKEN",
        "--param",
        "CallSid=CA1234567890ABCDE",
        "--param",
        "Digits=1234",
        "--param",
        "From=+14158675309",
        "--param",
        "To=+18005551212",
        "--param",
        "Caller=+14158675309",
        "--header",
        "X-Twilio-Signature: RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        "--url",
    ];
    let good = [&base[..], &["https://mycompany.com/myapp.php?foo=1&bar=2"]].concat();
    assert_eq!(voxguard(&good), (0, "valid\n".into(), String::new()));
    let moved = [&base[..], &["https://mycompany.com/myapp.php?foo=1&bar=3"]].concat();
    let (code, out, _) = voxguard(&moved);
    assert_eq!(
        (code, out.as_str()),
        (1, "invalid: signature does not match\n")
    );
    let (code, _, err) = voxguard(&[
        "webhook",
        "verify",
        "--scheme",
        "twilio",
        "--secret-env",
        "UNSET_VAR",
    ]);
    assert_eq!(code, 64);
    assert!(
        err.contains("environment variable UNSET_VAR is not set"),
        "{err}"
    );
}

#[test]
fn check_prints_secret_references_never_values() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("github.secret");
    std::fs::write(&secret_file, "file-held-secret-value\n").unwrap();
    let config = format!(
        "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nupstream = \"a\"\n[route.webhook]\nscheme = \"github\"\nsecret_env = \"GITHUB_WEBHOOK_SECRET\"\nsecret_file = {:?}\n",
        secret_file.display()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = voxguard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("env:GITHUB_WEBHOOK_SECRET") && out.contains("file:"),
        "{out}"
    );
    assert!(
        !out.contains("file-held-secret-value") && !out.contains(SECRET),
        "{out}"
    );

    std::fs::write(&secret_file, "").unwrap();
    let (code, _, err) = voxguard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("route[0].webhook.secret_file:") && err.contains("is empty"),
        "{err}"
    );
}
