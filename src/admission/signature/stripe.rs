//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` (several `v1` while a secret rolls),
//! each an HMAC-SHA256 of `t.body` keyed with the whole `whsec_…` string. Other schemes in the list
//! (`v0`) are ignored. The timestamp must be within the tolerance either way. Replay id: the matching
//! MAC, which covers the timestamp (Stripe re-signs each retry with a new one).

use super::encoding::{any_mac_matches, hex_exact, mac, to_hex};
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, fresh_timestamp, header};
use crate::config::webhook::HmacAlgorithm;

const SIGNATURE: &str = "stripe-signature";
const MAX_HEADER: usize = 2048;
const MAX_SIGNATURES: usize = 8;

pub struct Stripe {
    /// Seconds.
    pub tolerance: u64,
}

/// `(t, [v1 MACs])`; `Malformed` unless there is exactly one `t` and one or more well-formed `v1`.
fn parse(value: &str) -> Result<(&str, Vec<Vec<u8>>), Failure> {
    let mut t = None;
    let mut macs = Vec::new();
    for item in value.split(',') {
        let (k, v) = item.trim().split_once('=').ok_or(Failure::Malformed)?;
        match k {
            "t" if t.is_none() => t = Some(v),
            "t" => return Err(Failure::Malformed),
            "v1" => macs.push(hex_exact(v, 32)?),
            _ => {}
        }
    }
    if macs.is_empty() || macs.len() > MAX_SIGNATURES {
        return Err(Failure::Malformed);
    }
    Ok((t.ok_or(Failure::Malformed)?, macs))
}

impl SignatureScheme for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let (t, macs) = parse(header(req.headers, SIGNATURE, MAX_HEADER)?)?;
        fresh_timestamp(t, req.now, self.tolerance)?;
        let matched = any_mac_matches(
            HmacAlgorithm::Sha256,
            keys,
            &[t.as_bytes(), b".", req.body],
            &macs,
        )
        .ok_or(Failure::Mismatch)?;
        Ok(Verified {
            replay_ids: vec![[b"mac:", matched].concat()],
        })
    }

    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        let t = req.now.to_string();
        let tag = mac(HmacAlgorithm::Sha256, key, &[t.as_bytes(), b".", req.body]);
        Ok(vec![(
            "Stripe-Signature".into(),
            format!("t={t},v1={}", to_hex(tag.as_ref())),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Req, key};
    use super::*;

    // Stripe publishes no fixed vector; this one was made with stripe-python 16.1.0's
    // `WebhookSignature.generate_signature_header(BODY, SECRET, 1700000000)`.
    const SECRET: &str = "whsec_test_secret";
    const BODY: &str = "{\"id\": \"evt_test_webhook\", \"object\": \"event\"}";
    const T: u64 = 1_700_000_000;
    const HEADER: &str =
        "t=1700000000,v1=aafb6f8becb4b5db5da0da34d6fb419de5f0866d738651a835f821a8a96cf1f3";

    fn check(h: &str, body: &str, now: u64) -> Result<Verified, Failure> {
        let r = Req::new("https://x/", body.as_bytes(), now).header("stripe-signature", h);
        Stripe { tolerance: 300 }.verify(&r.signed(), &[key(SECRET)])
    }

    #[test]
    fn verifies_the_sdk_vector_and_signs_it() {
        assert!(check(HEADER, BODY, T).is_ok());
        let r = Req::new("https://x/", BODY.as_bytes(), T);
        let signed = Stripe { tolerance: 300 }
            .sign(&r.signed(), SECRET.as_bytes())
            .unwrap();
        assert_eq!(signed[0].1, HEADER);
    }

    #[test]
    fn one_good_entry_among_bad_ones_verifies() {
        let zeros = "0".repeat(64);
        let h = format!("t=1700000000,v1={zeros},v0=legacy,{}", &HEADER[13..]);
        assert!(check(&h, BODY, T).is_ok(), "{h}");
        assert_eq!(
            check(&format!("t=1700000000,v1={zeros}"), BODY, T),
            Err(Failure::Mismatch)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_stale() {
        assert!(check(HEADER, BODY, T + 300).is_ok());
        assert_eq!(check(HEADER, BODY, T + 301), Err(Failure::Stale), "old");
        assert_eq!(
            check(HEADER, BODY, T - 301),
            Err(Failure::Stale),
            "from the future"
        );
    }

    #[test]
    fn tampering_and_bad_headers_fail() {
        let mut body = BODY.to_string();
        body.replace_range(1..2, "'");
        assert_eq!(check(HEADER, &body, T), Err(Failure::Mismatch));
        let moved = HEADER.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            check(&moved, BODY, T),
            Err(Failure::Mismatch),
            "timestamp is signed"
        );
        assert_eq!(
            check(&HEADER[..HEADER.len() - 1], BODY, T),
            Err(Failure::Malformed)
        );
        assert_eq!(check("t=1700000000", BODY, T), Err(Failure::Malformed));
        assert_eq!(
            check(&HEADER[13..], BODY, T),
            Err(Failure::Malformed),
            "no t"
        );
        assert_eq!(
            check(&format!("t=1,{HEADER}"), BODY, T),
            Err(Failure::Malformed),
            "two t"
        );
        assert_eq!(check("t=abc,v1=00", BODY, T), Err(Failure::Malformed));
    }
}
