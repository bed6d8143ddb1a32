//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:timestamp:body">` with
//! `X-Slack-Request-Timestamp`, keyed with the app's signing secret; ±tolerance (Slack says 5 minutes).
//! Replay id: the MAC, which covers the timestamp.

use super::encoding::{any_mac_matches, hex_exact, mac, to_hex};
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, fresh_timestamp, header};
use crate::config::webhook::HmacAlgorithm;

const SIGNATURE: &str = "x-slack-signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";

pub struct Slack {
    /// Seconds.
    pub tolerance: u64,
}

impl SignatureScheme for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let sig = header(req.headers, SIGNATURE, 128)?;
        let ts = header(req.headers, TIMESTAMP, 16)?;
        let candidate = [hex_exact(
            sig.strip_prefix("v0=").ok_or(Failure::Malformed)?,
            32,
        )?];
        fresh_timestamp(ts, req.now, self.tolerance)?;
        let parts: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", req.body];
        let matched = any_mac_matches(HmacAlgorithm::Sha256, keys, &parts, &candidate)
            .ok_or(Failure::Mismatch)?;
        Ok(Verified {
            replay_ids: vec![[b"mac:", matched].concat()],
        })
    }

    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        let ts = req.now.to_string();
        let tag = mac(
            HmacAlgorithm::Sha256,
            key,
            &[b"v0:", ts.as_bytes(), b":", req.body],
        );
        Ok(vec![
            ("X-Slack-Request-Timestamp".into(), ts),
            (
                "X-Slack-Signature".into(),
                format!("v0={}", to_hex(tag.as_ref())),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Req, key};
    use super::*;

    // Slack's worked example ("Verifying requests from Slack", api.slack.com).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: u64 = 1_531_420_618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn check(sig: &str, body: &str, ts: u64, now: u64) -> Result<Verified, Failure> {
        let r = Req::new("https://x/", body.as_bytes(), now)
            .header("x-slack-signature", sig)
            .header("x-slack-request-timestamp", &ts.to_string());
        Slack { tolerance: 300 }.verify(&r.signed(), &[key(SECRET)])
    }

    #[test]
    fn verifies_slacks_worked_example() {
        assert!(check(SIGNATURE, BODY, TS, TS + 10).is_ok());
        let r = Req::new("https://x/", BODY.as_bytes(), TS);
        let signed = Slack { tolerance: 300 }
            .sign(&r.signed(), SECRET.as_bytes())
            .unwrap();
        assert_eq!(signed[1].1, SIGNATURE);
    }

    #[test]
    fn tampering_staleness_and_bad_headers_fail() {
        assert_eq!(
            check(SIGNATURE, &BODY.replace("foobar", "foobaz"), TS, TS),
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
            check(&SIGNATURE[3..], BODY, TS, TS),
            Err(Failure::Malformed),
            "no v0="
        );
        assert_eq!(
            check(&SIGNATURE[..60], BODY, TS, TS),
            Err(Failure::Malformed)
        );
    }
}
