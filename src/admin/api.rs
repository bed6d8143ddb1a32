//! The admin API under `/admin/`: every call carries `Authorization: Bearer <token>`; tokens are
//! configured as SHA-256 hashes with a name and a role. Missing or unknown token → 401; a known token
//! without the role → 403. Every call, allowed or not, is audited (token name, role, endpoint, status),
//! and failed tokens are `admin_auth` offences for the ban rules. Responses are JSON, except the WAV
//! export.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::admission::signature::encoding::{ct_eq, sha256};
use crate::audit::log::Event;
use crate::config::{AdminToken, Offence, Role};
use crate::pipeline::Pipeline;
use crate::proxy::body::{ProxyBody, full};
use crate::recording::keystore::{Entry, Keystore};
use crate::recording::writer::FileSink;

/// What the admin API acts on.
pub struct AdminContext {
    pub tokens: ArcSwap<Vec<AdminToken>>,
    pub pipeline: Arc<Pipeline>,
    pub recordings: Arc<FileSink>,
    /// Asks the main loop to reload the config file (as SIGHUP does).
    pub reload: Arc<tokio::sync::Notify>,
    pub audit_dir: std::path::PathBuf,
    /// The Ed25519 key that verifies the checkpoints.
    pub audit_public_key: Vec<u8>,
}

/// Largest request body accepted (JSON commands are small).
const MAX_BODY: usize = 64 * 1024;

fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut res = Response::new(full(format!("{v}\n")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, &json!({"error": message}))
}

/// Which roles may call an endpoint.
fn allowed(endpoint: &str, role: Role) -> bool {
    match role {
        Role::Admin => true,
        Role::Operator => matches!(
            endpoint,
            "reload" | "bans.list" | "bans.lift" | "keys.rotate"
        ),
        Role::Auditor => matches!(
            endpoint,
            "recordings.list" | "audit" | "report" | "bans.list"
        ),
    }
}

/// The endpoint name (for roles and the audit log) and its path parameter, or `None` if unknown.
fn endpoint(method: &Method, path: &str) -> Option<(&'static str, Option<String>)> {
    let rest = path.strip_prefix("/admin/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match (method, parts.as_slice()) {
        (&Method::GET, ["recordings"]) => ("recordings.list", None),
        (&Method::GET, ["recordings", id, "wav"]) => ("recordings.export", Some(id.to_string())),
        (&Method::DELETE, ["recordings", id]) => ("recordings.delete", Some(id.to_string())),
        (&Method::POST, ["subjects", "erase"]) => ("subjects.erase", None),
        (&Method::GET, ["bans"]) => ("bans.list", None),
        (&Method::DELETE, ["bans", ip]) => ("bans.lift", Some(ip.to_string())),
        (&Method::POST, ["reload"]) => ("reload", None),
        (&Method::POST, ["keys", "rotate"]) => ("keys.rotate", None),
        (&Method::GET, ["audit"]) => ("audit", None),
        (&Method::GET, ["report"]) => ("report", None),
        _ => return None,
    })
}

/// The token's entry, compared in constant time against every configured hash.
fn authenticate(tokens: &[AdminToken], header: Option<&str>) -> Option<AdminToken> {
    let presented = header?.strip_prefix("Bearer ")?.trim();
    let hash = sha256(presented.as_bytes());
    let mut found = None;
    for t in tokens {
        if ct_eq(&t.sha256, &hash) && found.is_none() {
            found = Some(t.clone());
        }
    }
    found
}

/// Handles one `/admin/` request from `client`.
pub async fn handle(
    ctx: &Arc<AdminContext>,
    req: http::Request<hyper::body::Incoming>,
    client: IpAddr,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let Some((name, param)) = endpoint(&method, &path) else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    let audit = ctx.pipeline.audit.as_ref().map(|(a, _)| a);
    let record = |token: Option<&AdminToken>, status: StatusCode| {
        if let Some(a) = audit {
            let mut e = Event::new(
                "admin_call",
                if status.is_success() { "ok" } else { "denied" },
                json!({"endpoint": name, "method": method.as_str(), "status": status.as_u16(),
                       "role": token.map(|t| t.role), "client": client.to_string()}),
            );
            e.actor =
                token.map_or_else(|| "anonymous".to_string(), |t| format!("token:{}", t.name));
            a.record(e);
        }
    };
    if ctx.pipeline.bans.banned(client).is_some() {
        record(None, StatusCode::FORBIDDEN);
        return error(StatusCode::FORBIDDEN, "banned");
    }
    let tokens = ctx.tokens.load();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = authenticate(&tokens, auth) else {
        record(None, StatusCode::UNAUTHORIZED);
        ctx.pipeline.record_offence(Offence::AdminAuth, client);
        let mut res = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return res;
    };
    if !allowed(name, token.role) {
        record(Some(&token), StatusCode::FORBIDDEN);
        ctx.pipeline.record_offence(Offence::AdminAuth, client);
        return error(
            StatusCode::FORBIDDEN,
            "this token's role may not call this endpoint",
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            record(Some(&token), StatusCode::PAYLOAD_TOO_LARGE);
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
    };
    // SQLite (which waits up to its busy timeout for another writer), file deletes, decryption and
    // audit-file reads all block: on the blocking pool, so the calls sharing this thread go on.
    let for_dispatch = ctx.clone();
    let res =
        tokio::task::spawn_blocking(move || dispatch(&for_dispatch, name, param, &query, body))
            .await
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "the admin call failed"));
    record(Some(&token), res.status());
    res
}

/// A recording's keystore entry: 404 if there is none, 500 if the keystore cannot say.
fn entry_of(ks: &Keystore, id: &str) -> Result<Entry, (StatusCode, String)> {
    match ks.get(id) {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => Err((StatusCode::NOT_FOUND, "no such recording".into())),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn dispatch(
    ctx: &AdminContext,
    name: &str,
    param: Option<String>,
    query: &str,
    body: Bytes,
) -> Response<ProxyBody> {
    let ks = &ctx.recordings.keystore;
    let audit = ctx.pipeline.audit.as_ref().map(|(a, _)| a);
    match name {
        "recordings.list" => match ks.list() {
            Ok(list) => {
                let items: Vec<Value> = list
                    .iter()
                    .map(|e| json!({"id": e.id, "route": e.route, "created_ms": e.created_ms, "expires_ms": e.expires_ms,
                        "duration_ms": e.duration_ms, "kek_id": e.wrapped.kek_id, "bytes": e.bytes, "state": e.state}))
                    .collect();
                json_response(StatusCode::OK, &json!({"recordings": items}))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        "recordings.export" => {
            let id = param.unwrap_or_default();
            let entry = match entry_of(ks, &id) {
                Ok(entry) => entry,
                Err((status, why)) => return error(status, &why),
            };
            match crate::recording::read::decrypt(&entry.path, ks, &ctx.recordings.ring.load()) {
                Ok(d) => {
                    if let Some(a) = audit {
                        a.record(
                            Event::new(
                                "recording_exported",
                                "ok",
                                json!({"recording": id, "integrity": d.integrity.to_string()}),
                            )
                            .route(&entry.route),
                        );
                    }
                    let mut res = Response::new(full(d.wav()));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("audio/wav"),
                    );
                    res
                }
                Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        "recordings.delete" => {
            let id = param.unwrap_or_default();
            let entry = match entry_of(ks, &id) {
                Ok(entry) => entry,
                Err((status, why)) => return error(status, &why),
            };
            // The key goes first: while it stays, the recording is not shredded, and saying
            // otherwise would be worse than failing.
            let deleted = ks.delete(&id);
            if deleted.is_ok() {
                let _ = std::fs::remove_file(&entry.path);
            }
            if let Some(a) = audit {
                let outcome = if deleted.is_ok() { "ok" } else { "error" };
                a.record(
                    Event::new("recording_deleted", outcome, json!({"recording": id}))
                        .route(&entry.route),
                );
            }
            match deleted {
                Ok(_) => json_response(StatusCode::OK, &json!({"deleted": id})),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        "subjects.erase" => {
            let subject = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["subject"].as_str().map(str::to_string));
            let Some(subject) = subject.filter(|s| !s.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "body must be {\"subject\": \"…\"}");
            };
            let hash = crate::keys::keyed_hash(&ctx.recordings.subject_key, &subject);
            let entries = match ks.by_subject(&hash) {
                Ok(entries) => entries,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let (mut erased, mut failed) = (0, 0);
            for e in &entries {
                if ks.delete(&e.id).is_ok() {
                    let _ = std::fs::remove_file(&e.path);
                    erased += 1;
                } else {
                    failed += 1;
                }
            }
            if let Some(a) = audit {
                a.record(Event::new(
                    "subject_erased",
                    if failed == 0 { "ok" } else { "error" },
                    json!({"recordings": erased, "failed": failed}),
                ));
            }
            // A partial erasure is an error the caller must retry (what was erased stays erased).
            let status = if failed == 0 {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            json_response(status, &json!({"erased": erased, "failed": failed}))
        }
        "bans.list" => {
            let bans: Vec<Value> = ctx
                .pipeline
                .bans
                .list()
                .iter()
                .map(|(ip, left)| json!({"client": ip.to_string(), "remaining_s": left.as_secs()}))
                .collect();
            json_response(StatusCode::OK, &json!({"bans": bans}))
        }
        "bans.lift" => match param.as_deref().and_then(|p| p.parse::<IpAddr>().ok()) {
            None => error(StatusCode::BAD_REQUEST, "not an IP address"),
            Some(ip) => {
                let lifted = ctx.pipeline.bans.lift(ip);
                if let Some(a) = audit {
                    a.record(Event::new(
                        "ban_lifted",
                        if lifted { "ok" } else { "none" },
                        json!({"client": ip.to_string()}),
                    ));
                }
                json_response(
                    if lifted {
                        StatusCode::OK
                    } else {
                        StatusCode::NOT_FOUND
                    },
                    &json!({"lifted": lifted}),
                )
            }
        },
        "reload" | "keys.rotate" => {
            // Keys are part of the config: rotation is a reload with a new active KEK.
            ctx.reload.notify_one();
            json_response(StatusCode::ACCEPTED, &json!({"reload": "requested"}))
        }
        "audit" => {
            let from = query_param(query, "from").unwrap_or_default();
            let to = query_param(query, "to").unwrap_or_else(|| "9999".into());
            let mut entries = Vec::new();
            for f in crate::audit::log::files(&ctx.audit_dir) {
                for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                    if let Ok(v) = serde_json::from_str::<Value>(line) {
                        let t = v["time"].as_str().unwrap_or("");
                        if t >= from.as_str() && t <= to.as_str() {
                            entries.push(v);
                        }
                    }
                }
            }
            json_response(StatusCode::OK, &json!({"entries": entries}))
        }
        "report" => {
            let from = query_param(query, "from").unwrap_or_default();
            let to = query_param(query, "to").unwrap_or_else(|| "9999".into());
            let Some((_, key)) = &ctx.pipeline.audit else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "no audit log");
            };
            let text = crate::audit::log::read_all(&ctx.audit_dir);
            let public = &ctx.audit_public_key;
            json_response(
                StatusCode::OK,
                &crate::audit::report::report(&text, key.expose(), public, &from, &to),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_issue() {
        for e in [
            "recordings.list",
            "recordings.export",
            "recordings.delete",
            "subjects.erase",
            "bans.list",
            "bans.lift",
            "reload",
            "keys.rotate",
            "audit",
            "report",
        ] {
            assert!(allowed(e, Role::Admin), "{e}");
        }
        assert!(allowed("reload", Role::Operator) && allowed("bans.lift", Role::Operator));
        assert!(!allowed("recordings.export", Role::Operator) && !allowed("audit", Role::Operator));
        assert!(allowed("audit", Role::Auditor) && allowed("recordings.list", Role::Auditor));
        assert!(!allowed("recordings.delete", Role::Auditor) && !allowed("reload", Role::Auditor));
    }

    #[test]
    fn tokens_are_matched_by_hash() {
        let tokens = vec![AdminToken {
            name: "ops".into(),
            role: Role::Operator,
            sha256: sha256(b"s3cret"),
        }];
        assert_eq!(
            authenticate(&tokens, Some("Bearer s3cret")).unwrap().name,
            "ops"
        );
        assert!(authenticate(&tokens, Some("Bearer wrong")).is_none());
        assert!(authenticate(&tokens, Some("s3cret")).is_none());
        assert!(authenticate(&tokens, None).is_none());
    }
}
