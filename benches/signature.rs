//! Verification cost per scheme, for 1 KiB and 64 KiB bodies: what a signed route adds to a request
//! on top of buffering the body. Twilio's body is a form (parsed, sorted, concatenated); the others
//! hash the raw bytes. Also the replay cache's claim-and-settle.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use voxguard::admission::signature::replay::ReplayCache;
use voxguard::admission::signature::{Secret, SignatureScheme, SignedRequest, scheme_for};
use voxguard::config::webhook::{ReplayConfig, SchemeKind};

const NOW: u64 = 1_700_000_000;
const URL: &str = "https://voice.example.com/voice/incoming?route=main";
const TELNYX_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TELNYX_PUBLIC: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

/// The content type of Twilio's forms.
const FORM: &str = "application/x-www-form-urlencoded";

/// The most parameters voxguard accepts in a Twilio form (`MAX_PARAMS` in `twilio.rs`).
const TWILIO_MAX_PARAMS: usize = 1000;

/// A form of `size` bytes for Twilio (Twilio signs parameters), raw JSON-ish bytes for the rest.
/// Twilio's form is parameters like `Param7=%2B14158675309+some+value`, at most the parameter
/// limit of them: past ~30 KiB each value gets a tail of `x`s. (Until the twenty-eighth session the
/// 64 KiB form had ~2,200 short parameters; voxguard now refuses such a form.)
fn body(kind: &SchemeKind, size: usize) -> (Vec<u8>, Option<&'static str>) {
    if *kind == SchemeKind::Twilio {
        let short = "Param999=%2B14158675309+some+value&".len();
        let tail = "x".repeat((size / (TWILIO_MAX_PARAMS - 10)).saturating_sub(short));
        let mut form = String::new();
        let mut i = 0;
        while form.len() < size {
            if i > 0 {
                form.push('&');
            }
            form.push_str(&format!("Param{i}=%2B14158675309+some+value{tail}"));
            i += 1;
        }
        assert!(i <= TWILIO_MAX_PARAMS, "{i} parameters");
        (form.into_bytes(), Some(FORM))
    } else {
        (vec![b'x'; size], None)
    }
}

/// A Twilio status callback as the load harness sends it (`voxguard-load http --sign-twilio`):
/// eight short parameters, two of them escaped, and one long unescaped `Pad`, to about `size`.
fn callback_form(size: usize) -> Vec<u8> {
    let mut form = String::from(
        "AccountSid=AC00000000000000000000000000000000&CallSid=CA0000000000000000000000000000002a\
         &CallStatus=in-progress&Direction=inbound&From=%2B14155550100&To=%2B14155550199\
         &ApiVersion=2010-04-01&Digits=1&Pad=",
    );
    while form.len() < size {
        form.push('x');
    }
    form.into_bytes()
}

/// An incoming-call webhook as Twilio sends one: the parameters of its voice request (made-up
/// values), 26 short ones, the phone numbers escaped, 520 bytes.
fn voice_form() -> Vec<u8> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", "CA0000000000000000000000000000002a"),
        ("CallStatus", "ringing"),
        ("Called", "+14155550199"),
        ("CalledCity", "SAN FRANCISCO"),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("CalledZip", "94103"),
        ("Caller", "+14155550100"),
        ("CallerCity", "OAKLAND"),
        ("CallerCountry", "US"),
        ("CallerState", "CA"),
        ("CallerZip", "94612"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("FromCity", "OAKLAND"),
        ("FromCountry", "US"),
        ("FromState", "CA"),
        ("FromZip", "94612"),
        ("StirVerstat", "TN-Validation-Passed-A"),
        ("To", "+14155550199"),
        ("ToCity", "SAN FRANCISCO"),
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("ToZip", "94103"),
    ] {
        form.append_pair(name, value);
    }
    form.finish().into_bytes()
}

/// The costliest 64 KiB forms for Twilio's parser (twenty-seventh and twenty-eighth sessions): a
/// forged request reaches verification with any body up to the route's cap, so these bound what
/// one costs. Stray `%`s and `%41`s are single values made of escapes; the third is the parameter
/// limit's worth of equal names (the sort's worst case) and one long value.
fn worst_forms(size: usize) -> [(&'static str, Vec<u8>); 3] {
    let equal_names = b"a&".repeat(999);
    let long_value = [
        &equal_names[..],
        b"a=",
        &b"x".repeat(size - equal_names.len() - 2),
    ]
    .concat();
    [
        ("twilio-worst-stray-percents", b"%".repeat(size)),
        ("twilio-worst-escapes", b"%41".repeat(size / 3)),
        ("twilio-worst-many-params", long_value),
    ]
}

struct Case {
    name: &'static str,
    scheme: Box<dyn SignatureScheme>,
    keys: Vec<Secret>,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn case(name: &'static str, kind: SchemeKind, secret: &str, size: usize) -> Case {
    let body = body(&kind, size);
    case_with_body(name, kind, secret, body)
}

/// A case over a given body and its content type.
fn case_with_body(
    name: &'static str,
    kind: SchemeKind,
    secret: &str,
    (body, content_type): (Vec<u8>, Option<&'static str>),
) -> Case {
    let scheme = scheme_for(&kind, Duration::from_secs(300));
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    headers.insert("webhook-id", HeaderValue::from_static("msg_bench"));
    let (sign_key, verify_secret) = match kind {
        SchemeKind::Telnyx => (TELNYX_SEED.as_bytes().to_vec(), TELNYX_PUBLIC),
        _ => (kind.decode_secret(secret).unwrap(), secret),
    };
    let req = SignedRequest {
        method: &Method::POST,
        url: URL,
        headers: &headers,
        body: &body,
        now: NOW,
    };
    let signed = scheme.sign(&req, &sign_key).unwrap();
    for (k, v) in signed {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    let keys = vec![Secret::new(kind.decode_secret(verify_secret).unwrap())];
    Case {
        name,
        scheme,
        keys,
        headers,
        body,
    }
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("webhook_verify");
    let voice = voice_form();
    let voice_len = voice.len();
    for size in [voice_len, 1024usize, 64 * 1024] {
        let cases = if size == voice_len {
            vec![case_with_body(
                "twilio-voice",
                SchemeKind::Twilio,
                "twilio-auth-token",
                (voice.clone(), Some(FORM)),
            )]
        } else {
            vec![
                case("twilio", SchemeKind::Twilio, "twilio-auth-token", size),
                case_with_body(
                    "twilio-callback",
                    SchemeKind::Twilio,
                    "twilio-auth-token",
                    (callback_form(size), Some(FORM)),
                ),
                case("github", SchemeKind::Github, "github-secret", size),
                case("stripe", SchemeKind::Stripe, "whsec_stripe", size),
                case(
                    "standard-webhooks",
                    SchemeKind::StandardWebhooks,
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    size,
                ),
                case("slack", SchemeKind::Slack, "slack-signing-secret", size),
                case("telnyx", SchemeKind::Telnyx, TELNYX_PUBLIC, size),
            ]
        };
        let mut cases = cases;
        if size == 64 * 1024 {
            cases.extend(worst_forms(size).map(|(name, form)| {
                case_with_body(
                    name,
                    SchemeKind::Twilio,
                    "twilio-auth-token",
                    (form, Some(FORM)),
                )
            }));
        }
        group.throughput(Throughput::Bytes(size as u64));
        for case in &cases {
            let req = SignedRequest {
                method: &Method::POST,
                url: URL,
                headers: &case.headers,
                body: &case.body,
                now: NOW,
            };
            assert!(
                case.scheme.verify(&req, &case.keys).is_ok(),
                "{} must verify",
                case.name
            );
            group.bench_with_input(BenchmarkId::new(case.name, size), &req, |b, req| {
                b.iter(|| case.scheme.verify(req, &case.keys).is_ok())
            });
        }
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    // A full cache (every delivery in a load test is new, so the cache fills and stays full), with one
    // id per delivery and with two (GitHub's MAC and delivery GUID).
    for (name, ids_per_delivery) in [
        ("replay_claim_and_settle", 1),
        ("replay_claim_and_settle_two_ids", 2),
    ] {
        let cache = ReplayCache::with_system_clock(ReplayConfig {
            window: Duration::from_secs(600),
            max_entries: 100_000,
        });
        let mut n = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                let ids: Vec<Vec<u8>> = (0..ids_per_delivery)
                    .map(|_| {
                        n += 1;
                        n.to_le_bytes().to_vec()
                    })
                    .collect();
                cache.claim(&ids).unwrap().settle(http::StatusCode::OK);
            })
        });
    }
}

criterion_group!(benches, verify, replay);
criterion_main!(benches);
