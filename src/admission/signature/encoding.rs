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
    pub(crate) fn ring(self) -> hmac::Algorithm {
        match self {
            HmacAlgorithm::Sha256 => hmac::HMAC_SHA256,
            HmacAlgorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    /// MAC length in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            HmacAlgorithm::Sha256 => 32,
            HmacAlgorithm::Sha1 => 20,
        }
    }
}

/// HMAC of the concatenated `parts` under raw key bytes (signing, tests).
pub fn mac(alg: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    mac_with(&hmac::Key::new(alg.ring(), key), parts)
}

/// HMAC of the concatenated `parts` (no copy of the body is made).
pub fn mac_with(key: &hmac::Key, parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
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
