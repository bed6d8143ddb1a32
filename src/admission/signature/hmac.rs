//! The generic scheme: one header carrying `<prefix><hex or base64 HMAC of the raw body>`. GitHub
//! (`X-Hub-Signature-256: sha256=<hex>`), Bitbucket and most GitLab-style providers are instances.
//! Replay ids: the MAC itself (a repeat of the same signed body), and the `id_header` value when one is
//! configured and present. The id header is not signed, so the MAC is what stops an edited-id replay.

use http::HeaderName;

use super::encoding::{any_mac_matches, base64_exact, hex_exact, mac, to_base64, to_hex};
use super::{Failure, Secret, SignatureScheme, SignedRequest, Verified, header};
use crate::config::webhook::{HmacSpec, MacEncoding};

/// Longest signature header accepted (a hex SHA-256 is 64 bytes; prefixes are short).
const MAX_HEADER: usize = 256;

pub struct Hmac {
    name: &'static str,
    spec: HmacSpec,
    /// The spec's header names, parsed once: a lookup by `&str` parses the name every request.
    header: HeaderName,
    id_header: Option<HeaderName>,
}

impl Hmac {
    /// `spec`'s header names must be valid (the config checks them).
    pub fn new(name: &'static str, spec: HmacSpec) -> Self {
        let parse = |h: &str| HeaderName::from_bytes(h.as_bytes()).expect("validated header name");
        Self {
            name,
            header: parse(&spec.header),
            id_header: spec.id_header.as_deref().map(parse),
            spec,
        }
    }

    fn decode(&self, value: &str) -> Result<Vec<u8>, Failure> {
        let encoded = value
            .strip_prefix(self.spec.prefix.as_str())
            .ok_or(Failure::Malformed)?;
        let len = self.spec.algorithm.mac_len();
        match self.spec.encoding {
            MacEncoding::Hex => hex_exact(encoded, len),
            MacEncoding::Base64 => base64_exact(encoded, len),
        }
    }
}

impl SignatureScheme for Hmac {
    fn name(&self) -> &'static str {
        self.name
    }

    fn verify(&self, req: &SignedRequest<'_>, keys: &[Secret]) -> Result<Verified, Failure> {
        let value = header(req.headers, &self.header, MAX_HEADER)?;
        let candidate = [self.decode(value)?];
        let matched = any_mac_matches(self.spec.algorithm, keys, &[req.body], &candidate)
            .ok_or(Failure::Mismatch)?;
        let id = self
            .id_header
            .as_ref()
            .and_then(|h| header(req.headers, h, MAX_HEADER).ok())
            .map(|id| [b"id:", id.as_bytes()].concat());
        let mut replay_ids = vec![[b"mac:", matched].concat()];
        replay_ids.extend(id);
        Ok(Verified { replay_ids })
    }

    fn sign(&self, req: &SignedRequest<'_>, key: &[u8]) -> Result<Vec<(String, String)>, String> {
        let tag = mac(self.spec.algorithm, key, &[req.body]);
        let encoded = match self.spec.encoding {
            MacEncoding::Hex => to_hex(tag.as_ref()),
            MacEncoding::Base64 => to_base64(tag.as_ref()),
        };
        Ok(vec![(
            self.spec.header.clone(),
            format!("{}{encoded}", self.spec.prefix),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Req, key};
    use super::*;
    use crate::config::webhook::HmacAlgorithm;

    fn base64_sha1() -> Hmac {
        Hmac::new(
            "hmac",
            HmacSpec {
                header: "x-signature".into(),
                algorithm: HmacAlgorithm::Sha1,
                encoding: MacEncoding::Base64,
                prefix: String::new(),
                id_header: Some("x-delivery".into()),
            },
        )
    }

    #[test]
    fn base64_sha1_round_trips_and_rejects_tampering() {
        let s = base64_sha1();
        let req = Req::new("https://x/", b"payload", 0).sign_with(&s, b"k");
        assert!(s.verify(&req.signed(), &[key("k")]).is_ok());
        let mut tampered = req;
        tampered.body[0] ^= 1;
        assert_eq!(
            s.verify(&tampered.signed(), &[key("k")]),
            Err(Failure::Mismatch)
        );
    }

    #[test]
    fn the_mac_and_the_id_header_are_the_replay_ids() {
        let s = base64_sha1();
        let req = Req::new("https://x/", b"p", 0)
            .sign_with(&s, b"k")
            .header("x-delivery", "d-1");
        let v = s.verify(&req.signed(), &[key("k")]).unwrap();
        assert_eq!(v.replay_ids.len(), 2);
        assert!(v.replay_ids[0].starts_with(b"mac:"));
        assert_eq!(v.replay_ids[1], b"id:d-1");
    }

    #[test]
    fn missing_prefix_or_wrong_length_is_malformed() {
        let s = Hmac::new("hmac", HmacSpec::default());
        let tag = to_hex(mac(HmacAlgorithm::Sha256, b"k", &[b"p"]).as_ref());
        for bad in [
            tag.clone(),
            format!("sha256={}", &tag[..63]),
            format!("sha1={tag}"),
        ] {
            let req = Req::new("https://x/", b"p", 0).header("x-hub-signature-256", &bad);
            assert_eq!(
                s.verify(&req.signed(), &[key("k")]),
                Err(Failure::Malformed),
                "{bad}"
            );
        }
    }
}
