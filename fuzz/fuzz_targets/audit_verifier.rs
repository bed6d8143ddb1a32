//! The audit-log verifier reads files an attacker may have edited: any lines give a verdict, never a
//! panic, and garbage is never reported as an intact log.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxguard::audit::chain::{Verdict, verify};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mac_key = [7u8; 32];
    let public_key = [9u8; 32];
    let verdict = verify(text.lines(), Some(&mac_key), &public_key);
    // No input can carry a valid MAC under a key it never saw.
    if !text.trim().is_empty() {
        assert!(
            !matches!(verdict, Verdict::Ok { .. }),
            "forged log accepted: {verdict:?}"
        );
    }
});
