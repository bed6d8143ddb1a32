//! Recording files and chunk plaintexts: any bytes give an error or the chunks that authenticated,
//! never a panic; without the key nothing authenticates.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxguard::keys::KeyBytes;
use voxguard::recording::format::{Record, open_all};

fuzz_target!(|data: &[u8]| {
    let dek = KeyBytes::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    if let Ok((_, chunks, _)) = open_all(&dek, data) {
        assert!(
            chunks.is_empty(),
            "a chunk authenticated without being sealed"
        );
    }
    let _ = Record::decode_all(data);
});
