//! The audit chain. Each entry is one JSON line ending in `"mac":"<hex>"`, where
//! mac = HMAC-SHA256(audit key, previous mac ‖ the line without its mac). A keyless hash chain runs
//! beside it: head = SHA-256(previous head ‖ whole line). Every N entries or T seconds a `checkpoint`
//! entry carries the head, signed with Ed25519, so an auditor holding only the public key can verify
//! everything up to the last checkpoint. A clean stop ends the log with a closing checkpoint; a log
//! that ends otherwise was cut (or is still being written).

use ring::hmac;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::admission::signature::encoding::{hex_exact, sha256, to_hex};

/// What a checkpoint signs: a domain tag, the head and the checkpoint's sequence number.
fn signed_bytes(head: &[u8; 32], seq: u64) -> Vec<u8> {
    let mut m = b"voxguard-audit-checkpoint\0".to_vec();
    m.extend_from_slice(head);
    m.extend_from_slice(&seq.to_be_bytes());
    m
}

/// The writer's side of the chain.
pub struct Chain {
    key: hmac::Key,
    signer: Ed25519KeyPair,
    pub seq: u64,
    prev_mac: [u8; 32],
    head: [u8; 32],
}

/// Where a chain stands, to continue it (across files and restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: u64,
    pub prev_mac: [u8; 32],
    pub head: [u8; 32],
}

impl Chain {
    pub fn new(mac_key: &[u8; 32], signing_seed: &[u8; 32], at: Position) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, mac_key),
            signer: Ed25519KeyPair::from_seed_unchecked(signing_seed).expect("a 32-byte seed"),
            seq: at.seq,
            prev_mac: at.prev_mac,
            head: at.head,
        }
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key().as_ref().to_vec()
    }

    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            prev_mac: self.prev_mac,
            head: self.head,
        }
    }

    /// Seals `body` (a JSON object's text without the closing brace, e.g. `{"seq":1,…`) into a line.
    fn seal(&mut self, body: &str) -> String {
        let canonical = format!("{body}}}");
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.prev_mac);
        ctx.update(canonical.as_bytes());
        let mac = ctx.sign();
        self.prev_mac.copy_from_slice(mac.as_ref());
        let line = format!("{body},\"mac\":\"{}\"}}", to_hex(mac.as_ref()));
        self.head = sha256(&[self.head.as_slice(), line.as_bytes()].concat());
        line
    }

    /// The next entry: `fields` is a JSON object whose members go after the common ones.
    pub fn entry(
        &mut self,
        time: &str,
        event: &str,
        actor: &str,
        route: Option<&str>,
        outcome: &str,
        fields: &serde_json::Value,
    ) -> String {
        self.seq += 1;
        let common = serde_json::json!({
            "seq": self.seq, "time": time, "event": event, "actor": actor, "route": route, "outcome": outcome,
        });
        let mut body = common.to_string();
        body.pop(); // the closing brace
        if let Some(map) = fields.as_object().filter(|m| !m.is_empty()) {
            let extra = serde_json::Value::Object(map.clone()).to_string();
            body.push(',');
            body.push_str(&extra[1..extra.len() - 1]);
        }
        self.seal(&body)
    }

    /// A checkpoint over everything so far; `closing` marks the end of a clean run.
    pub fn checkpoint(&mut self, time: &str, closing: bool) -> String {
        let head = self.head;
        let seq = self.seq + 1;
        let sig = self.signer.sign(&signed_bytes(&head, seq));
        let fields = serde_json::json!({
            "head": to_hex(&head),
            "closing": closing,
            "signature": to_hex(sig.as_ref()),
        });
        self.entry(time, "checkpoint", "voxguard", None, "ok", &fields)
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry checked out and the log ends with a closing checkpoint.
    Ok {
        entries: u64,
        last_checkpoint: Option<(u64, String)>,
    },
    /// Every entry checked out, but entries follow the last checkpoint, or it is not a closing one: the
    /// log is still open, or its tail was cut.
    Unsealed {
        entries: u64,
        last_checkpoint: Option<(u64, String)>,
    },
    /// The first entry that does not check out (1-based line across the files), and why.
    Broken {
        line: u64,
        seq: Option<u64>,
        why: String,
    },
}

/// Verifies lines (all files, in order) with the MAC key (`Some`: every entry is checked) and/or the
/// public key (checkpoints are checked; between them the hash chain ties every line).
pub fn verify<'a>(
    lines: impl Iterator<Item = &'a str>,
    mac_key: Option<&[u8; 32]>,
    public_key: &[u8],
) -> Verdict {
    let key = mac_key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k));
    let pk = UnparsedPublicKey::new(&ED25519, public_key);
    let mut prev_mac = [0u8; 32];
    let mut head = [0u8; 32];
    let mut expected_seq: Option<u64> = Some(1);
    let mut entries = 0u64;
    let mut last_checkpoint = None;
    let mut sealed = false;
    for (i, line) in lines.enumerate() {
        let n = i as u64 + 1;
        let broken = |why: String, seq: Option<u64>| Verdict::Broken { line: n, seq, why };
        let Some(at) = line.rfind(",\"mac\":\"") else {
            return broken("no mac".into(), None);
        };
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => return broken("not JSON".into(), None),
        };
        let seq = value["seq"].as_u64();
        let Ok(mac) = hex_exact(line[at + 8..].trim_end_matches("\"}"), 32) else {
            return broken("malformed mac".into(), seq);
        };
        if let Some(s) = seq {
            if expected_seq.is_some_and(|e| e != s) {
                let e = expected_seq.unwrap_or(1);
                return broken(
                    format!(
                        "sequence {s} where {e} was due (entries removed, inserted or reordered)"
                    ),
                    seq,
                );
            }
            expected_seq = Some(s + 1);
        } else {
            return broken("no seq".into(), None);
        }
        if let Some(key) = &key {
            let canonical = format!("{}}}", &line[..at]);
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(&prev_mac);
            ctx.update(canonical.as_bytes());
            if ctx.sign().as_ref() != mac.as_slice() {
                return broken(
                    "mac does not match (altered, or not in its place in the chain)".into(),
                    seq,
                );
            }
        }
        if value["event"] == "checkpoint" {
            let signed_head = value["head"].as_str().and_then(|h| hex_exact(h, 32).ok());
            let sig = value["signature"]
                .as_str()
                .and_then(|s| hex_exact(s, 64).ok());
            match (signed_head, sig) {
                (Some(h), Some(sig)) if h == head => {
                    if pk
                        .verify(&signed_bytes(&head, seq.unwrap_or(0)), &sig)
                        .is_err()
                    {
                        return broken("checkpoint signature does not verify".into(), seq);
                    }
                }
                _ => {
                    return broken(
                        "checkpoint head does not match the lines before it".into(),
                        seq,
                    );
                }
            }
            last_checkpoint = Some((
                seq.unwrap_or(0),
                value["time"].as_str().unwrap_or("").to_string(),
            ));
            sealed = value["closing"] == true;
        } else {
            sealed = false;
        }
        prev_mac.copy_from_slice(&mac);
        head = sha256(&[head.as_slice(), line.as_bytes()].concat());
        entries += 1;
    }
    if sealed {
        Verdict::Ok {
            entries,
            last_checkpoint,
        }
    } else {
        Verdict::Unsealed {
            entries,
            last_checkpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Chain {
        Chain::new(&[7; 32], &[9; 32], Position::default())
    }

    fn log(c: &mut Chain, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for i in 0..n {
            lines.push(c.entry(
                "2026-12-02T15:00:00Z",
                "test",
                "voxguard",
                Some("r"),
                "ok",
                &serde_json::json!({"i": i}),
            ));
            if i % 3 == 2 {
                lines.push(c.checkpoint("2026-12-02T15:00:01Z", false));
            }
        }
        lines.push(c.entry(
            "2026-12-02T15:00:02Z",
            "stop",
            "voxguard",
            None,
            "ok",
            &serde_json::json!({}),
        ));
        lines.push(c.checkpoint("2026-12-02T15:00:02Z", true));
        lines
    }

    fn check(lines: &[String], key: bool) -> Verdict {
        let pk = chain().public_key();
        verify(
            lines.iter().map(String::as_str),
            key.then_some(&[7; 32]),
            &pk,
        )
    }

    #[test]
    fn a_sealed_log_verifies_with_the_key_and_with_the_public_key_alone() {
        let mut c = chain();
        let lines = log(&mut c, 7);
        for key in [true, false] {
            match check(&lines, key) {
                Verdict::Ok {
                    entries,
                    last_checkpoint,
                } => {
                    assert_eq!(entries, lines.len() as u64);
                    assert_eq!(last_checkpoint.unwrap().0, lines.len() as u64);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let mut c = chain();
        let lines = log(&mut c, 7);
        let mut flipped = lines.clone();
        flipped[1] = flipped[1].replacen("\"i\":1", "\"i\":5", 1);
        assert!(
            matches!(check(&flipped, true), Verdict::Broken { line: 2, ref why, .. } if why.contains("mac does not match")),
            "{:?}",
            check(&flipped, true)
        );
        assert!(
            matches!(check(&flipped, false), Verdict::Broken { ref why, .. } if why.contains("checkpoint head")),
            "public key alone"
        );

        let mut deleted = lines.clone();
        deleted.remove(2);
        assert!(
            matches!(check(&deleted, true), Verdict::Broken { line: 3, ref why, .. } if why.contains("where 3 was due"))
        );

        let mut swapped = lines.clone();
        swapped.swap(0, 1);
        assert!(
            matches!(check(&swapped, true), Verdict::Broken { line: 1, ref why, .. } if why.contains("sequence"))
        );

        let cut: Vec<String> = lines[..4].to_vec(); // ends right after a checkpoint, not a closing one
        assert!(matches!(
            check(&cut, true),
            Verdict::Unsealed { entries: 4, .. }
        ));
        let mut resigned = lines.clone();
        let forged = Chain::new(&[7; 32], &[1; 32], Position::default()).checkpoint("t", true);
        resigned.push(forged);
        assert!(matches!(check(&resigned, false), Verdict::Broken { .. }));
    }

    #[test]
    fn the_chain_continues_across_files() {
        let mut c = chain();
        let first = log(&mut c, 2);
        let at = c.position();
        let mut resumed = Chain::new(&[7; 32], &[9; 32], at);
        let second = log(&mut resumed, 2);
        let all: Vec<String> = first.iter().chain(&second).cloned().collect();
        assert!(matches!(check(&all, true), Verdict::Ok { .. }));
        assert!(
            matches!(check(&second, true), Verdict::Broken { line: 1, .. }),
            "a later file alone does not start a chain"
        );
    }
}
