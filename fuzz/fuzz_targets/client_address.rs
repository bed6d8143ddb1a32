//! `X-Forwarded-For` and `Forwarded` from a trusted proxy: any values give an address that is the
//! peer or one the header named, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use voxguard::admission::client_ip::client_ip;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == b'\n');
    let mut headers = http::HeaderMap::new();
    for name in ["x-forwarded-for", "forwarded", "x-forwarded-for"] {
        if let Some(v) = parts
            .next()
            .and_then(|p| http::HeaderValue::from_bytes(p).ok())
        {
            headers.append(name, v);
        }
    }
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let trusted = ["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let decided = client_ip(peer, &headers, &trusted);
    if decided.ip != peer {
        let text = String::from_utf8_lossy(data).to_ascii_lowercase();
        let shown = decided.ip.to_string();
        assert!(
            text.contains(&shown) || matches!(decided.ip, IpAddr::V6(_)),
            "{shown} came from nowhere"
        );
    }
});
