//! Key-encryption keys (KEKs): 256-bit keys with an id, one active for new recordings, the others kept
//! to unwrap older ones. A fresh data key (DEK) per recording is wrapped by the active KEK with
//! AES-256-GCM (ring, as for TLS and webhook signatures). Key bytes zeroize on drop and have no
//! `Debug` or `Display` that could print them.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// 32 secret bytes.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; 32]>);

impl KeyBytes {
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut *k)
            .expect("system randomness");
        Self(k)
    }

    /// From base64 of exactly 32 bytes. The error never contains the input.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| "is not base64".to_string())?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| format!("must be 32 bytes, found {}", decoded.len()))?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*self.0))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*self.0).expect("32-byte key"))
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(***)")
    }
}

/// Why a DEK could not be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "KEK {0:?} is not configured (it was retired or never loaded): the recording cannot be decrypted"
    )]
    UnknownKek(String),
    #[error("the wrapped data key does not authenticate under KEK {0:?}")]
    BadWrap(String),
}

/// The configured KEKs.
#[derive(Clone)]
pub struct KeyRing {
    active: String,
    keks: Arc<HashMap<String, KeyBytes>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keks.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("ids", &ids)
            .finish()
    }
}

/// A DEK wrapped for storage: nonce ‖ ciphertext ‖ tag, under the KEK with `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_id: String,
    pub blob: Vec<u8>,
}

impl KeyRing {
    /// `active` must be one of `keks`.
    pub fn new(active: String, keks: HashMap<String, KeyBytes>) -> Self {
        assert!(keks.contains_key(&active), "the active KEK is configured");
        Self {
            active,
            keks: Arc::new(keks),
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keks.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Wraps `dek` under the active KEK. The KEK id is authenticated with it.
    pub fn wrap(&self, dek: &KeyBytes) -> WrappedKey {
        let kek = &self.keks[&self.active];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("system randomness");
        let mut blob = dek.expose().to_vec();
        kek.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.active.as_bytes()),
                &mut blob,
            )
            .expect("sealing 32 bytes cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&blob);
        blob.iter_mut().for_each(|b| *b = 0);
        WrappedKey {
            kek_id: self.active.clone(),
            blob: out,
        }
    }

    pub fn unwrap(&self, wrapped: &WrappedKey) -> Result<KeyBytes, KeyError> {
        let kek = self
            .keks
            .get(&wrapped.kek_id)
            .ok_or_else(|| KeyError::UnknownKek(wrapped.kek_id.clone()))?;
        let bad = || KeyError::BadWrap(wrapped.kek_id.clone());
        if wrapped.blob.len() != NONCE_LEN + 32 + 16 {
            return Err(bad());
        }
        let (nonce, sealed) = wrapped.blob.split_at(NONCE_LEN);
        let mut buf = Zeroizing::new(sealed.to_vec());
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let plain = kek
            .aead()
            .open_in_place(nonce, Aad::from(wrapped.kek_id.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        let bytes: [u8; 32] = (&*plain).try_into().map_err(|_| bad())?;
        Ok(KeyBytes(Zeroizing::new(bytes)))
    }
}

/// A keyed hash (HMAC-SHA256) of an identifier such as a data subject or a stream id: the value
/// itself is never stored, and without the key it cannot be guessed from a list of candidates.
pub fn keyed_hash(key: &KeyBytes, value: &str) -> [u8; 32] {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose()),
        value.as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(active: &str, ids: &[&str]) -> (KeyRing, HashMap<String, KeyBytes>) {
        let keks: HashMap<String, KeyBytes> = ids
            .iter()
            .map(|i| (i.to_string(), KeyBytes::random()))
            .collect();
        (KeyRing::new(active.into(), keks.clone()), keks)
    }

    #[test]
    fn wrap_unwrap_round_trips_under_the_active_kek() {
        let (r, _) = ring("k1", &["k1"]);
        let dek = KeyBytes::random();
        let w = r.wrap(&dek);
        assert_eq!(w.kek_id, "k1");
        assert_eq!(r.unwrap(&w).unwrap().expose(), dek.expose());
    }

    #[test]
    fn rotation_keeps_old_wraps_readable_and_a_missing_kek_is_a_clear_error() {
        let (old, keks) = ring("k1", &["k1"]);
        let dek = KeyBytes::random();
        let w = old.wrap(&dek);
        let mut both = keks.clone();
        both.insert("k2".into(), KeyBytes::random());
        let rotated = KeyRing::new("k2".into(), both);
        assert_eq!(
            rotated.unwrap(&w).unwrap().expose(),
            dek.expose(),
            "old wraps still open"
        );
        assert_eq!(
            rotated.wrap(&dek).kek_id,
            "k2",
            "new wraps use the active KEK"
        );
        let (retired, _) = ring("k3", &["k3"]);
        assert_eq!(
            retired.unwrap(&w).unwrap_err(),
            KeyError::UnknownKek("k1".into())
        );
    }

    #[test]
    fn a_tampered_wrap_or_a_relabelled_kek_id_fails() {
        let (r, _) = ring("k1", &["k1", "k2"]);
        let mut w = r.wrap(&KeyBytes::random());
        w.blob[20] ^= 1;
        assert_eq!(r.unwrap(&w).unwrap_err(), KeyError::BadWrap("k1".into()));
        let mut relabelled = r.wrap(&KeyBytes::random());
        relabelled.kek_id = "k2".into();
        assert!(r.unwrap(&relabelled).is_err());
    }

    #[test]
    fn keys_parse_strictly_and_never_print() {
        let k = KeyBytes::random();
        let b64 = k.to_base64();
        assert_eq!(KeyBytes::from_base64(&b64).unwrap().expose(), k.expose());
        assert!(
            KeyBytes::from_base64("AAAA")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert_eq!(format!("{k:?}"), "KeyBytes(***)");
        let (r, _) = ring("k1", &["k1"]);
        assert!(!format!("{r:?}").contains(&*b64));
    }

    #[test]
    fn keyed_hashes_depend_on_the_key() {
        let (a, b) = (KeyBytes::random(), KeyBytes::random());
        assert_eq!(
            keyed_hash(&a, "+14155550100"),
            keyed_hash(&a, "+14155550100")
        );
        assert_ne!(
            keyed_hash(&a, "+14155550100"),
            keyed_hash(&b, "+14155550100")
        );
    }
}
