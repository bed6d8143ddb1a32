//! Every webhook scheme's signature headers, as a forger would send them: any header values and body
//! give a verdict, never a panic, and none is accepted without the secret. A request the scheme
//! itself signed is accepted (sign then verify round-trips for any URL and body).
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxguard::admission::signature::{SignatureScheme, SignedRequest, scheme_for};
use voxguard::config::webhook::{HmacSpec, SchemeKind, Secret};

/// Every header any scheme reads; the input's first lines fill them in this order.
const HEADERS: [&str; 12] = [
    "x-twilio-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-signature",
    "x-delivery",
];
const NOW: u64 = 1_767_225_600;

fn schemes() -> Vec<Box<dyn SignatureScheme>> {
    let hmac = HmacSpec {
        header: "x-signature".into(),
        prefix: "sha256=".into(),
        id_header: Some("x-delivery".into()),
        ..HmacSpec::default()
    };
    [
        SchemeKind::Twilio,
        SchemeKind::Github,
        SchemeKind::Stripe,
        SchemeKind::StandardWebhooks,
        SchemeKind::Slack,
        SchemeKind::Telnyx,
        SchemeKind::Hmac(hmac),
    ]
    .iter()
    .map(|k| scheme_for(k, std::time::Duration::from_secs(300)))
    .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(HEADERS.len() + 2, |&b| b == b'\n');
    let mut headers = http::HeaderMap::new();
    for name in HEADERS {
        if let Some(v) = parts
            .next()
            .and_then(|p| http::HeaderValue::from_bytes(p).ok())
        {
            headers.append(name, v);
        }
    }
    let url = format!(
        "https://voice.example/hook?{}",
        String::from_utf8_lossy(parts.next().unwrap_or_default())
    );
    let body = parts.next().unwrap_or_default();
    let method = http::Method::POST;
    let forged = SignedRequest {
        method: &method,
        url: &url,
        headers: &headers,
        body,
        now: NOW,
    };
    let secret = b"whsec-fuzz-secret-0123456789abcdef";
    // A 32-byte Ed25519 public key for Telnyx; the others use the secret as an HMAC key.
    let keys = [Secret::new(&secret[..]), Secret::new(&[3u8; 32][..])];
    for scheme in schemes() {
        assert!(
            scheme.verify(&forged, &keys).is_err(),
            "{} accepted a forged signature",
            scheme.name()
        );
        if scheme.name() == "telnyx" {
            continue; // signing needs the private key
        }
        let unsigned = http::HeaderMap::new();
        let req = SignedRequest {
            headers: &unsigned,
            ..forged
        };
        let Ok(signed) = scheme.sign(&req, secret) else {
            continue;
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in signed {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(&value).unwrap(),
            );
        }
        let req = SignedRequest {
            headers: &headers,
            ..forged
        };
        assert!(
            scheme.verify(&req, &keys).is_ok(),
            "{} rejected its own signature",
            scheme.name()
        );
    }
});
