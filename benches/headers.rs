//! Per-request header work on the proxy's hot path: hop-by-hop removal and X-Forwarded-* edits.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use voxguard::proxy::headers::{remove_hop_by_hop, set_forwarded};

fn typical_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("voice.example.com"));
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("TwilioProxy/1.1"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert(
        "x-twilio-signature",
        HeaderValue::from_static("0123456789abcdefghij0123456="),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h
}

fn bench(c: &mut Criterion) {
    let template = typical_request_headers();
    let client = "203.0.113.9".parse().unwrap();
    let host = HeaderValue::from_static("voice.example.com");
    c.bench_function("request_headers_rewrite", |b| {
        b.iter(|| {
            let mut h = template.clone();
            remove_hop_by_hop(&mut h);
            set_forwarded(
                &mut h,
                client,
                Some(&host),
                "00000000000000000000000000000001",
            );
            h
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
