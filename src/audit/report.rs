//! The compliance report: totals for a period, computed from the audit log after verifying it, so the
//! numbers come with the chain's verdict.

use serde_json::{Map, Value, json};

use super::chain::{Verdict, verify};

/// Totals of the entries whose `time` is within `[from, to]` (RFC 3339 strings compare in time order).
pub fn report(text: &str, mac_key: &[u8; 32], public_key: &[u8], from: &str, to: &str) -> Value {
    let verdict = verify(text.lines(), Some(mac_key), public_key);
    let mut counts: Map<String, Value> = Map::new();
    let mut redactions: Map<String, Value> = Map::new();
    let mut signature_failures: Map<String, Value> = Map::new();
    let mut admin_by_role: Map<String, Value> = Map::new();
    let bump = |m: &mut Map<String, Value>, k: &str, n: u64| {
        let v = m.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
        m.insert(k.to_string(), v.into());
    };
    let mut last_kek: Option<String> = None;
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let time = e["time"].as_str().unwrap_or("");
        let active = e["active_kek"].as_str().map(str::to_string);
        let in_period = time >= from && time <= to;
        if let Some(k) = &active {
            if in_period && last_kek.as_ref().is_some_and(|l| l != k) {
                bump(&mut counts, "key_rotations", 1);
            }
            last_kek = Some(k.clone());
        }
        if !in_period {
            continue;
        }
        match e["event"].as_str().unwrap_or("") {
            "media_session" => {
                bump(&mut counts, "calls", 1);
                if let Some(r) = e["redactions"].as_object() {
                    for (k, v) in r {
                        bump(&mut redactions, k, v.as_u64().unwrap_or(0));
                    }
                }
            }
            "recording_created" => bump(&mut counts, "recorded_calls", 1),
            "recording_not_consented" => bump(&mut counts, "not_recorded_no_consent", 1),
            "webhook_signature_failure" => bump(
                &mut signature_failures,
                e["scheme"].as_str().unwrap_or("?"),
                1,
            ),
            "rate_limited" => bump(
                &mut counts,
                "rate_limit_refusals",
                e["count"].as_u64().unwrap_or(1),
            ),
            "ban" => bump(&mut counts, "bans", 1),
            "admin_call" => bump(&mut admin_by_role, e["role"].as_str().unwrap_or("none"), 1),
            "recording_exported" => bump(&mut counts, "exports", 1),
            "subject_erased" => bump(&mut counts, "erasures", 1),
            "recordings_expired" => bump(
                &mut counts,
                "retention_deletions",
                e["count"].as_u64().unwrap_or(0),
            ),
            _ => {}
        }
    }
    for k in [
        "calls",
        "recorded_calls",
        "not_recorded_no_consent",
        "rate_limit_refusals",
        "bans",
        "exports",
        "erasures",
        "retention_deletions",
        "key_rotations",
    ] {
        counts.entry(k.to_string()).or_insert(0.into());
    }
    let chain = match verdict {
        Verdict::Ok { entries, .. } => {
            json!({"verified": true, "sealed": true, "entries": entries})
        }
        Verdict::Unsealed { entries, .. } => {
            json!({"verified": true, "sealed": false, "entries": entries})
        }
        Verdict::Broken { line, why, .. } => {
            json!({"verified": false, "broken_at_line": line, "why": why})
        }
    };
    let mut out = json!({"from": from, "to": to, "chain": chain});
    let o = out.as_object_mut().expect("an object");
    o.extend(counts);
    o.insert("redactions".into(), Value::Object(redactions));
    o.insert(
        "signature_failures".into(),
        Value::Object(signature_failures),
    );
    o.insert("admin_actions_by_role".into(), Value::Object(admin_by_role));
    out
}
