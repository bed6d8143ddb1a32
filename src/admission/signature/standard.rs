//! Standard Webhooks (Svix and the providers that follow the spec): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` (or the `svix-*` aliases). The signature header is a
//! space-separated list of `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`; other versions
//! (`v1a`, asymmetric) are ignored. The key is the base64 part of the `whsec_…` secret. Replay id:
//! `webhook-id`, which is signed and stays the same across retries.

use super::encoding::{any_mac_matches, base64_exact, mac, to_base64};
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, fresh_timestamp, header};
use crate::config::webhook::HmacAlgorithm;

const MAX_ID: usize = 256;
const MAX_SIGNATURES_HEADER: usize = 2048;
const MAX_SIGNATURES: usize = 8;

pub struct StandardWebhooks {
    /// Seconds.
    pub tolerance: u64,
}

/// The `webhook-*` header, or its `svix-*` alias when only that is present.
fn either<'a>(req: &'a SignedRequest<'_>, name: &str, max: usize) -> Result<&'a str, Failure> {
    match header(req.headers, format!("webhook-{name}"), max) {
        Err(Failure::Missing) => header(req.headers, format!("svix-{name}"), max),
        other => other,
    }
}

impl SignatureScheme for StandardWebhooks {
    fn name(&self) -> &'static str {
        "standard-webhooks"
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let id = either(req, "id", MAX_ID)?;
        let ts = either(req, "timestamp", 16)?;
        let list = either(req, "signature", MAX_SIGNATURES_HEADER)?;
        let mut macs = Vec::new();
        for entry in list.split(' ').filter(|e| !e.is_empty()) {
            let (version, sig) = entry.split_once(',').ok_or(Failure::Malformed)?;
            if version == "v1" {
                macs.push(base64_exact(sig, 32)?);
            }
        }
        if macs.is_empty() || macs.len() > MAX_SIGNATURES {
            return Err(Failure::Malformed);
        }
        fresh_timestamp(ts, req.now, self.tolerance)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", req.body];
        any_mac_matches(HmacAlgorithm::Sha256, keys, &parts, &macs).ok_or(Failure::Mismatch)?;
        Ok(Verified {
            replay_ids: vec![[b"id:", id.as_bytes()].concat()],
        })
    }

    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        let id = header(req.headers, "webhook-id", MAX_ID)
            .map_err(|_| "set the delivery id (webhook-id)".to_string())?;
        let ts = req.now.to_string();
        let tag = mac(
            HmacAlgorithm::Sha256,
            key,
            &[id.as_bytes(), b".", ts.as_bytes(), b".", req.body],
        );
        Ok(vec![
            ("webhook-id".into(), id.to_string()),
            ("webhook-timestamp".into(), ts),
            (
                "webhook-signature".into(),
                format!("v1,{}", to_base64(tag.as_ref())),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Req;
    use super::*;
    use crate::config::webhook::SchemeKind;

    // The Standard Webhooks / Svix published vector (svix-webhooks test suites, `testSignFunctionWorks`).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &str = "{\"test\": 2432232314}";
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key() -> Secret {
        Secret::new(SchemeKind::StandardWebhooks.decode_secret(SECRET).unwrap())
    }

    fn req(prefix: &str, sig: &str, body: &str, now: u64) -> Req {
        let h = |n: &str| -> &'static str { Box::leak(format!("{prefix}-{n}").into_boxed_str()) };
        Req::new("https://x/", body.as_bytes(), now)
            .header(h("id"), ID)
            .header(h("timestamp"), &TS.to_string())
            .header(h("signature"), sig)
    }

    fn check(r: &Req) -> Result<Verified, Failure> {
        StandardWebhooks { tolerance: 300 }.verify(&r.signed(), &[key()])
    }

    #[test]
    fn verifies_the_published_vector_with_both_header_spellings() {
        let ok = check(&req("webhook", SIGNATURE, BODY, TS)).unwrap();
        assert_eq!(ok.replay_ids, vec![format!("id:{ID}").into_bytes()]);
        assert!(check(&req("svix", SIGNATURE, BODY, TS)).is_ok());
        let unsigned = Req::new("https://x/", BODY.as_bytes(), TS).header("webhook-id", ID);
        let signed = StandardWebhooks { tolerance: 300 }
            .sign(&unsigned.signed(), key().bytes())
            .unwrap();
        assert_eq!(signed[2].1, SIGNATURE);
    }

    #[test]
    fn a_good_entry_in_a_list_verifies() {
        let list = format!("v1,{} v1a,ignored {SIGNATURE}", "A".repeat(43) + "=");
        assert!(check(&req("webhook", &list, BODY, TS)).is_ok(), "{list}");
    }

    #[test]
    fn tampering_staleness_and_bad_headers_fail() {
        assert_eq!(
            check(&req("webhook", SIGNATURE, "{\"test\": 2432232315}", TS)),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            check(&req("webhook", SIGNATURE, BODY, TS + 301)),
            Err(Failure::Stale)
        );
        assert_eq!(
            check(&req("webhook", SIGNATURE, BODY, TS - 301)),
            Err(Failure::Stale)
        );
        assert_eq!(
            check(&req("webhook", &SIGNATURE[..20], BODY, TS)),
            Err(Failure::Malformed)
        );
        assert_eq!(
            check(&req("webhook", "v1a,xyz", BODY, TS)),
            Err(Failure::Malformed)
        );
        let other_id = req("webhook", SIGNATURE, BODY, TS);
        let mut other_id = other_id;
        other_id
            .headers
            .insert("webhook-id", "msg_other".parse().unwrap());
        assert_eq!(check(&other_id), Err(Failure::Mismatch), "the id is signed");
        let missing = Req::new("https://x/", BODY.as_bytes(), TS).header("webhook-id", ID);
        assert_eq!(check(&missing), Err(Failure::Missing));
    }
}
