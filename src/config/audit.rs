//! `[audit]`: where the audit log goes, its keys (HMAC key for the chain, Ed25519 seed for the
//! checkpoints; referenced, never inline; generated into `data_dir` for development when absent) and
//! how often it is checkpointed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::file::AuditFile;
use super::recording::{load_key, secret_ref};
use super::webhook::SecretRef;
use super::{Errors, ser_duration};
use crate::keys::KeyBytes;

#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    pub dir: PathBuf,
    #[serde(serialize_with = "ser_opt_ref")]
    pub key_ref: Option<SecretRef>,
    #[serde(skip)]
    pub key: Option<KeyBytes>,
    #[serde(serialize_with = "ser_opt_ref")]
    pub signing_key_ref: Option<SecretRef>,
    #[serde(skip)]
    pub signing_key: Option<KeyBytes>,
    pub checkpoint_every: u64,
    #[serde(serialize_with = "ser_duration")]
    pub checkpoint_interval: Duration,
    pub max_file_bytes: u64,
}

fn ser_opt_ref<S: serde::Serializer>(r: &Option<SecretRef>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        None => s.serialize_none(),
        Some(r) => s.collect_str(r),
    }
}

pub(super) fn audit(
    e: &mut Errors,
    f: &AuditFile,
    data_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> AuditConfig {
    let key_ref = secret_ref(e, "audit.key", f.key_env.as_ref(), f.key_file.as_ref());
    let key = key_ref
        .as_ref()
        .and_then(|r| load_key(e, "audit.key", r, env));
    let signing_key_ref = secret_ref(
        e,
        "audit.signing_key",
        f.signing_key_env.as_ref(),
        f.signing_key_file.as_ref(),
    );
    let signing_key = signing_key_ref
        .as_ref()
        .and_then(|r| load_key(e, "audit.signing_key", r, env));
    AuditConfig {
        dir: f
            .dir
            .as_deref()
            .map_or_else(|| data_dir.join("audit"), PathBuf::from),
        key_ref,
        key,
        signing_key_ref,
        signing_key,
        checkpoint_every: e.positive("audit.checkpoint_every", f.checkpoint_every, 100),
        checkpoint_interval: e.duration(
            "audit.checkpoint_interval",
            f.checkpoint_interval.as_deref(),
            Duration::from_secs(60),
        ),
        max_file_bytes: e.positive("audit.max_file_bytes", f.max_file_bytes, 64 * 1024 * 1024),
    }
}
