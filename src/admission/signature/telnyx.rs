//! Telnyx: `telnyx-signature-ed25519` (base64 Ed25519 signature of `timestamp|body`) and
//! `telnyx-timestamp`, verified with the account's public key (base64, from the Mission Control
//! portal); ±tolerance. ring's Ed25519 rejects non-canonical signatures, so the signature bytes are a
//! stable replay id.

use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use super::encoding::base64_exact;
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, fresh_timestamp, header};

const SIGNATURE: &str = "telnyx-signature-ed25519";
const TIMESTAMP: &str = "telnyx-timestamp";

pub struct Telnyx {
    /// Seconds.
    pub tolerance: u64,
}

impl SignatureScheme for Telnyx {
    fn name(&self) -> &'static str {
        "telnyx"
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let sig = base64_exact(header(req.headers, SIGNATURE, 128)?, 64)?;
        let ts = header(req.headers, TIMESTAMP, 16)?;
        fresh_timestamp(ts, req.now, self.tolerance)?;
        let message = [ts.as_bytes(), b"|", req.body].concat();
        let mut matched = false;
        for key in keys {
            matched |= UnparsedPublicKey::new(&ED25519, key.bytes())
                .verify(&message, &sig)
                .is_ok();
        }
        if !matched {
            return Err(Failure::Mismatch);
        }
        Ok(Verified {
            replay_ids: vec![[b"sig:".as_slice(), &sig].concat()],
        })
    }

    /// `key` is the private key: a 32-byte seed, or libsodium's 64-byte seed + public key.
    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decoded = b64
            .decode(key)
            .map_err(|_| "the Telnyx signing key must be base64".to_string())?;
        let seed = match decoded.len() {
            32 | 64 => &decoded[..32],
            _ => return Err("the Telnyx signing key must be 32 (seed) or 64 bytes".into()),
        };
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| "invalid Ed25519 seed".to_string())?;
        let ts = req.now.to_string();
        let sig = pair.sign(&[ts.as_bytes(), b"|", req.body].concat());
        Ok(vec![
            ("telnyx-timestamp".into(), ts),
            (SIGNATURE.into(), b64.encode(sig.as_ref())),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Req;
    use super::*;
    use crate::config::webhook::SchemeKind;

    // Telnyx publishes no fixed vector and its SDK tests generate keys; this one was made with
    // PyNaCl 1.6 (the library telnyx-python verifies with): SigningKey(bytes(range(32))).
    const PUBLIC: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
    const TS: u64 = 1_700_000_000;
    const BODY: &str = "{\"data\":{\"event_type\":\"call.initiated\"}}";
    const SIGNATURE: &str =
        "aBuTQ1AtxQGraK6PrtJP6VW9Mu+R2aG6TbxS7lim9/ia8dN94a42JYoTifASA18z3xe+GLlYfveWOuyyKq7OCw==";

    fn check(sig: &str, body: &str, ts: u64, now: u64) -> Result<Verified, Failure> {
        let r = Req::new("https://x/", body.as_bytes(), now)
            .header("telnyx-signature-ed25519", sig)
            .header("telnyx-timestamp", &ts.to_string());
        let key = Secret::new(SchemeKind::Telnyx.decode_secret(PUBLIC).unwrap());
        Telnyx { tolerance: 300 }.verify(&r.signed(), &[key])
    }

    #[test]
    fn verifies_the_pynacl_vector_and_signs_it() {
        assert!(check(SIGNATURE, BODY, TS, TS).is_ok());
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::STANDARD.encode((0u8..32).collect::<Vec<_>>());
        let r = Req::new("https://x/", BODY.as_bytes(), TS);
        let signed = Telnyx { tolerance: 300 }
            .sign(&r.signed(), seed.as_bytes())
            .unwrap();
        assert_eq!(signed[1].1, SIGNATURE, "Ed25519 is deterministic");
    }

    #[test]
    fn tampering_staleness_and_bad_headers_fail() {
        assert_eq!(
            check(SIGNATURE, &BODY.replace("initiated", "answered"), TS, TS),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            check(SIGNATURE, BODY, TS + 1, TS),
            Err(Failure::Mismatch),
            "timestamp is signed"
        );
        assert_eq!(check(SIGNATURE, BODY, TS, TS + 301), Err(Failure::Stale));
        assert_eq!(check(SIGNATURE, BODY, TS, TS - 301), Err(Failure::Stale));
        assert_eq!(
            check(&SIGNATURE[..80], BODY, TS, TS),
            Err(Failure::Malformed)
        );
        let other_key = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";
        let r = Req::new("https://x/", BODY.as_bytes(), TS)
            .header("telnyx-signature-ed25519", SIGNATURE)
            .header("telnyx-timestamp", &TS.to_string());
        let wrong = Secret::new(SchemeKind::Telnyx.decode_secret(other_key).unwrap());
        assert_eq!(
            Telnyx { tolerance: 300 }.verify(&r.signed(), &[wrong]),
            Err(Failure::Mismatch)
        );
    }
}
