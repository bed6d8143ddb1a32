//! PROXY protocol v1/v2 headers from a load balancer: any bytes give a verdict, never a panic, and a
//! header never claims more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxguard::net::proxy_protocol::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Header { len, .. } = parse(data) {
        assert!(
            len <= data.len(),
            "header of {len} bytes from {} bytes",
            data.len()
        );
    }
});
