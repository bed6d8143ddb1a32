//! Decoding signatures into fixed-length bytes, and the MACs and comparisons every scheme shares.
//! A signature that does not decode to exactly the MAC's length is malformed: there is no partial
//! match, and the comparison itself is constant-time (`subtle`).

use base64::Engine as _;
use ring::hmac;
use subtle::ConstantTimeEq;

use super::Failure;
use crate::config::webhook::HmacAlgorithm;

/// `true` if equal; time depends only on the lengths. The differences are gathered eight bytes at a
/// time with no branch on them, and `subtle` compares the total behind its optimisation barrier
/// (byte by byte, its barrier cost ~15 instructions a byte; a MAC is compared on every request).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in a_words.zip(b_words) {
        diff |= word(x) ^ word(y);
    }
    diff.ct_eq(&0).into()
}

/// Exactly `2 * len` hex digits (either case) → `len` bytes. Every digit is decoded before the
/// one validity check, so the loop has no early exit to branch on.
pub fn hex_exact(s: &str, len: usize) -> Result<Vec<u8>, Failure> {
    if s.len() != 2 * len {
        return Err(Failure::Malformed);
    }
    // A digit's value, or 0xFF: its high bits mark the input as malformed.
    let nibble = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0xFF,
    };
    let mut invalid = 0u8;
    let out: Vec<u8> = s
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let (high, low) = (nibble(pair[0]), nibble(pair[1]));
            invalid |= high | low;
            high << 4 | low
        })
        .collect();
    if invalid & 0xF0 != 0 {
        return Err(Failure::Malformed);
    }
    Ok(out)
}

/// Standard padded base64 of exactly `len` bytes → the bytes.
pub fn base64_exact(s: &str, len: usize) -> Result<Vec<u8>, Failure> {
    if s.len() != len.div_ceil(3) * 4 {
        return Err(Failure::Malformed);
    }
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        _ => Err(Failure::Malformed),
    }
}

/// [`base64_exact`] for a MAC (at most SHA-256's 32 bytes), decoded inline instead of on the heap.
pub fn base64_tag(s: &str, len: usize) -> Result<Tag, Failure> {
    // The decoder wants room for its estimate, three bytes per four characters: 33 for 32 bytes.
    let mut out = [0u8; 33];
    if len > 32 || s.len() != len.div_ceil(3) * 4 {
        return Err(Failure::Malformed);
    }
    match base64::engine::general_purpose::STANDARD.decode_slice(s, &mut out) {
        Ok(n) if n == len => Ok(Tag::new(&out[..n])),
        _ => Err(Failure::Malformed),
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Writes `bytes` as lowercase hex into `out` (twice as long), for callers that keep the digits
/// off the heap.
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

pub fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl HmacAlgorithm {
    /// MAC length in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha1 => 20,
        }
    }
}

/// A secret as an HMAC key, its padded key blocks already hashed. HMAC-SHA256 is ring's. HMAC-SHA1
/// (Twilio's Auth Token scheme, generic `algorithm = "sha1"` routes) runs on the `sha1` crate, which
/// the WebSocket handshake already builds in: it uses the CPU's SHA extensions where there are
/// some, while ring's SHA-1 is portable code. On this VM that made SHA-1 a third of a Twilio
/// verification; with SHA-NI it is ~5× faster.
#[derive(Clone)]
pub enum HmacKey {
    Sha256(hmac::Key),
    Sha1(Sha1Key),
}

impl HmacKey {
    pub fn new(alg: HmacAlgorithm, key: &[u8]) -> Self {
        match alg {
            HmacAlgorithm::Sha256 => HmacKey::Sha256(hmac::Key::new(hmac::HMAC_SHA256, key)),
            HmacAlgorithm::Sha1 => HmacKey::Sha1(Sha1Key::new(key)),
        }
    }

    /// A MAC under this key, its parts still to come.
    pub fn start(&self) -> MacInProgress<'_> {
        match self {
            HmacKey::Sha256(key) => MacInProgress::Sha256(hmac::Context::with_key(key)),
            HmacKey::Sha1(key) => MacInProgress::Sha1 {
                inner: key.inner.clone(),
                key,
            },
        }
    }
}

/// HMAC-SHA1 (RFC 2104) as two SHA-1 states that have absorbed the key XOR ipad and opad.
#[derive(Clone)]
pub struct Sha1Key {
    inner: sha1::Sha1,
    outer: sha1::Sha1,
}

/// SHA-1's block size: a longer key is hashed first, a shorter one padded with zeros (RFC 2104).
const SHA1_BLOCK: usize = 64;

impl Sha1Key {
    fn new(key: &[u8]) -> Self {
        use sha1::Digest as _;
        let mut block = [0u8; SHA1_BLOCK];
        if key.len() > SHA1_BLOCK {
            block[..20].copy_from_slice(&sha1::Sha1::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let padded = |pad: u8| {
            let mut state = sha1::Sha1::new();
            state.update(block.map(|b| b ^ pad));
            state
        };
        Self {
            inner: padded(0x36),
            outer: padded(0x5c),
        }
    }
}

/// A MAC, up to SHA-256's 32 bytes, kept inline.
#[derive(Clone, Copy)]
pub struct Tag {
    bytes: [u8; 32],
    len: u8,
}

impl Tag {
    fn new(mac: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..mac.len()].copy_from_slice(mac);
        Self {
            bytes,
            len: mac.len() as u8,
        }
    }
}

impl AsRef<[u8]> for Tag {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// HMAC of the concatenated `parts` under raw key bytes (signing, tests).
pub fn mac(alg: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Tag {
    mac_with(&HmacKey::new(alg, key), parts)
}

/// HMAC of the concatenated `parts` (no copy of the body is made).
pub fn mac_with(key: &HmacKey, parts: &[&[u8]]) -> Tag {
    let mut mac = key.start();
    for p in parts {
        mac.update(p);
    }
    mac.finish()
}

/// An HMAC being computed: for a scheme whose parts are computed (Twilio's sorted form), which
/// feeds them as it makes them instead of listing them first.
pub enum MacInProgress<'k> {
    Sha256(hmac::Context),
    Sha1 { inner: sha1::Sha1, key: &'k Sha1Key },
}

impl MacInProgress<'_> {
    pub fn update(&mut self, part: &[u8]) {
        use sha1::Digest as _;
        match self {
            MacInProgress::Sha256(ctx) => ctx.update(part),
            MacInProgress::Sha1 { inner, .. } => inner.update(part),
        }
    }

    pub fn finish(self) -> Tag {
        use sha1::Digest as _;
        match self {
            MacInProgress::Sha256(ctx) => Tag::new(ctx.sign().as_ref()),
            MacInProgress::Sha1 { inner, key } => {
                let mut outer = key.outer.clone();
                outer.update(inner.finalize());
                Tag::new(&outer.finalize())
            }
        }
    }
}

/// Whether any of `candidates` is the MAC of `parts` under any of `keys`; every pair is compared
/// (no early exit). Returns the matching candidate.
pub fn any_mac_matches<'c>(
    alg: HmacAlgorithm,
    keys: &[super::Secret],
    parts: &[&[u8]],
    candidates: &'c [Vec<u8>],
) -> Option<&'c [u8]> {
    let mut found = None;
    for key in keys {
        let tag = mac_with(key.hmac_key(alg), parts);
        for c in candidates {
            if ct_eq(tag.as_ref(), c) && found.is_none() {
                found = Some(c.as_slice());
            }
        }
    }
    found
}

/// SHA-256 digest.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_finds_a_difference_in_any_byte_and_any_length() {
        for len in [0, 1, 7, 8, 9, 20, 32, 33, 64] {
            let a: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(ct_eq(&a, &a.clone()), "len {len}");
            for i in 0..len {
                for bit in [0x01, 0x80] {
                    let mut b = a.clone();
                    b[i] ^= bit;
                    assert!(!ct_eq(&a, &b), "len {len}, byte {i}, bit {bit:#x}");
                }
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!ct_eq(&a, &longer), "len {len} against {}", len + 1);
        }
    }

    #[test]
    fn hex_must_be_exact_length_and_digits() {
        assert_eq!(hex_exact("0aFf", 2).unwrap(), vec![0x0a, 0xff]);
        assert_eq!(hex_exact("0aF", 2), Err(Failure::Malformed));
        assert_eq!(hex_exact("0aFf00", 2), Err(Failure::Malformed));
        assert_eq!(hex_exact("0g00", 2), Err(Failure::Malformed));
        assert_eq!(hex_exact("", 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn base64_must_decode_to_the_exact_length() {
        let twenty = to_base64(&[7; 20]);
        assert_eq!(base64_exact(&twenty, 20).unwrap(), vec![7; 20]);
        assert_eq!(base64_exact(&twenty[..27], 20), Err(Failure::Malformed));
        assert_eq!(
            base64_exact(&to_base64(&[7; 21]), 20),
            Err(Failure::Malformed)
        );
        assert_eq!(
            base64_exact("!!!!!!!!!!!!!!!!!!!!!!!!!!!=", 20),
            Err(Failure::Malformed)
        );
    }

    #[test]
    fn a_base64_tag_decodes_as_base64_exact_does() {
        for len in [20, 32] {
            let good = to_base64(&[7; 32][..len]);
            assert_eq!(base64_tag(&good, len).unwrap().as_ref(), &[7; 32][..len]);
            for bad in [
                good[..good.len() - 1].to_string(),
                to_base64(&[7; 33][..len + 1]),
                "!".repeat(good.len()),
                "A".repeat(good.len()),
            ] {
                assert_eq!(base64_tag(&bad, len).err(), base64_exact(&bad, len).err());
                assert!(base64_tag(&bad, len).is_err(), "{bad:?} is not {len} bytes");
            }
        }
        assert!(
            base64_tag(&to_base64(&[7; 33]), 33).is_err(),
            "longer than any MAC"
        );
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex_exact(s, s.len() / 2).unwrap()
    }

    /// RFC 2202's HMAC-SHA1 test cases: short and long keys (a key over 64 bytes is hashed first),
    /// short and long data.
    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data"
                    .to_vec(),
                "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
            ),
        ];
        for (key, data, expected) in cases {
            let tag = mac(HmacAlgorithm::Sha1, &key, &[&data]);
            assert_eq!(to_hex(tag.as_ref()), expected, "key of {} bytes", key.len());
        }
    }

    /// The same MAC as ring's HMAC-SHA1 for keys around the block size and data split anywhere.
    #[test]
    fn hmac_sha1_agrees_with_ring() {
        for key_len in [0, 1, 20, 63, 64, 65, 100, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
            let reference = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
            for data_len in [0, 1, 55, 56, 63, 64, 65, 1000] {
                let data: Vec<u8> = (0..data_len).map(|i| (i * 31 + key_len) as u8).collect();
                let expected = hmac::sign(&reference, &data);
                let (a, b) = data.split_at(data_len / 3);
                assert_eq!(
                    mac(HmacAlgorithm::Sha1, &key, &[a, b]).as_ref(),
                    expected.as_ref(),
                    "key {key_len} bytes, data {data_len} bytes"
                );
            }
        }
    }

    #[test]
    fn every_key_is_tried() {
        let keys = [
            super::super::Secret::new(b"old".to_vec()),
            super::super::Secret::new(b"new".to_vec()),
        ];
        let good = mac(HmacAlgorithm::Sha256, b"new", &[b"body"])
            .as_ref()
            .to_vec();
        let cands = [vec![0; 32], good.clone()];
        assert_eq!(
            any_mac_matches(HmacAlgorithm::Sha256, &keys, &[b"bo", b"dy"], &cands),
            Some(good.as_slice())
        );
        assert_eq!(
            any_mac_matches(HmacAlgorithm::Sha256, &keys[..1], &[b"body"], &cands),
            None
        );
    }
}
