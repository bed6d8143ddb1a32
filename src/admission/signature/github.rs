//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, keyed with the webhook
//! secret as written. Replay ids: the MAC and the delivery GUID (`X-GitHub-Delivery`); the GUID is not
//! signed, so the MAC is what catches a replay with an edited GUID.

use super::hmac::Hmac;
use crate::config::webhook::{HmacAlgorithm, HmacSpec, MacEncoding};

pub fn github() -> Hmac {
    Hmac::new(
        "github",
        HmacSpec {
            header: "x-hub-signature-256".into(),
            algorithm: HmacAlgorithm::Sha256,
            encoding: MacEncoding::Hex,
            prefix: "sha256=".into(),
            id_header: Some("x-github-delivery".into()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Req, key};
    use super::super::{Failure, SignatureScheme};
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries", docs.github.com).
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn req(sig: &str, body: &[u8]) -> Req {
        Req::new("https://x/", body, 0).header("x-hub-signature-256", sig)
    }

    #[test]
    fn verifies_githubs_published_vector_and_signs_it() {
        let g = github();
        assert!(
            g.verify(&req(SIGNATURE, BODY).signed(), &[key(SECRET)])
                .is_ok()
        );
        let upper = format!("sha256={}", SIGNATURE[7..].to_uppercase());
        assert!(
            g.verify(&req(&upper, BODY).signed(), &[key(SECRET)])
                .is_ok()
        );
        let signed = g.sign(&req("", BODY).signed(), SECRET.as_bytes()).unwrap();
        assert_eq!(
            signed,
            vec![("x-hub-signature-256".to_string(), SIGNATURE.to_string())]
        );
    }

    #[test]
    fn tampering_and_bad_headers_fail() {
        let g = github();
        let k = [key(SECRET)];
        assert_eq!(
            g.verify(&req(SIGNATURE, b"Hello, World?").signed(), &k),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            g.verify(&req(SIGNATURE, BODY).signed(), &[key("wrong")]),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            g.verify(&req(&SIGNATURE[..40], BODY).signed(), &k),
            Err(Failure::Malformed)
        );
        assert_eq!(
            g.verify(&req("sha256=", BODY).signed(), &k),
            Err(Failure::Malformed)
        );
        let none = Req::new("https://x/", BODY, 0);
        assert_eq!(g.verify(&none.signed(), &k), Err(Failure::Missing));
        let twice = req(SIGNATURE, BODY).header("x-hub-signature-256", SIGNATURE);
        assert_eq!(g.verify(&twice.signed(), &k), Err(Failure::Malformed));
    }

    #[test]
    fn rotation_old_and_new_secrets_both_verify() {
        let g = github();
        let keys = [key("new secret"), key(SECRET)];
        assert!(g.verify(&req(SIGNATURE, BODY).signed(), &keys).is_ok());
    }

    #[test]
    fn delivery_id_and_mac_are_the_replay_ids() {
        let g = github();
        let k = [key(SECRET)];
        let with_id = req(SIGNATURE, BODY).header("x-github-delivery", "72d3162e");
        let ids = g.verify(&with_id.signed(), &k).unwrap().replay_ids;
        assert_eq!(ids[1], b"id:72d3162e");
        let without = g
            .verify(&req(SIGNATURE, BODY).signed(), &k)
            .unwrap()
            .replay_ids;
        assert_eq!(
            without,
            ids[..1],
            "the MAC is the same id with or without the GUID"
        );
    }
}
