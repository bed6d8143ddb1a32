//! `[recording]` and `[keys]`: where recordings go, how long they live, how they are written, and the
//! KEKs that wrap their data keys. KEKs and the subject-hash key are referenced (`env` / `file`), never
//! written inline; without any, a development KEK and subject key are generated into `data_dir`
//! (0600) at start-up with a warning, like the development certificate.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::file::{KeysFile, RecordingFile};
use super::webhook::{SecretRef, resolve};
use super::{Errors, ser_duration};
use crate::keys::KeyBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every sealed chunk: a power loss loses at most the unflushed interval.
    Chunk,
    /// When the recording ends (a process crash still keeps every written chunk: the OS has them).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The call goes on unrecorded; the error is counted and logged.
    Continue,
    /// The call is closed (1011).
    Close,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingConfig {
    pub dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub retention: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub flush_interval: Duration,
    pub fsync: Fsync,
    pub on_error: OnError,
    #[serde(serialize_with = "ser_opt_ref")]
    pub subject_key_ref: Option<SecretRef>,
    #[serde(skip)]
    pub subject_key: Option<KeyBytes>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KekConfig {
    pub id: String,
    #[serde(serialize_with = "ser_ref")]
    pub secret_ref: SecretRef,
    #[serde(skip)]
    pub key: KeyBytes,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct KeysConfig {
    /// `None` with no KEKs: the development KEK.
    pub active: Option<String>,
    pub kek: Vec<KekConfig>,
}

fn ser_ref<S: serde::Serializer>(r: &SecretRef, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(r)
}

fn ser_opt_ref<S: serde::Serializer>(r: &Option<SecretRef>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        None => s.serialize_none(),
        Some(r) => s.collect_str(r),
    }
}

pub(super) fn secret_ref(
    e: &mut Errors,
    key: &str,
    env: Option<&String>,
    file: Option<&String>,
) -> Option<SecretRef> {
    match (env, file) {
        (Some(_), Some(_)) => {
            e.push(key.to_string(), "set env or file, not both");
            None
        }
        (Some(v), None) => Some(SecretRef::Env(v.clone())),
        (None, Some(f)) => Some(SecretRef::File(f.into())),
        (None, None) => None,
    }
}

pub(super) fn load_key(
    e: &mut Errors,
    key: &str,
    r: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<KeyBytes> {
    match resolve(r, env)
        .and_then(|s| KeyBytes::from_base64(&s).map_err(|why| format!("{r} {why}")))
    {
        Ok(k) => Some(k),
        Err(reason) => {
            e.push(key.to_string(), reason);
            None
        }
    }
}

pub(super) fn recording(
    e: &mut Errors,
    f: &RecordingFile,
    data_dir: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> RecordingConfig {
    let subject_key_ref = secret_ref(
        e,
        "recording.subject_key",
        f.subject_key_env.as_ref(),
        f.subject_key_file.as_ref(),
    );
    let subject_key = subject_key_ref
        .as_ref()
        .and_then(|r| load_key(e, "recording.subject_key", r, env));
    RecordingConfig {
        dir: f
            .dir
            .as_deref()
            .map_or_else(|| data_dir.join("recordings"), PathBuf::from),
        retention: e.duration(
            "recording.retention",
            f.retention.as_deref(),
            super::defaults::RECORDING_RETENTION,
        ),
        flush_interval: e.duration(
            "recording.flush_interval",
            f.flush_interval.as_deref(),
            super::defaults::RECORDING_FLUSH_INTERVAL,
        ),
        fsync: match f.fsync.as_deref() {
            None | Some("close") => Fsync::Close,
            Some("chunk") => Fsync::Chunk,
            Some(other) => {
                e.push(
                    "recording.fsync",
                    format!("{other:?} is not one of \"chunk\", \"close\""),
                );
                Fsync::Close
            }
        },
        on_error: match f.on_error.as_deref() {
            None | Some("continue") => OnError::Continue,
            Some("close") => OnError::Close,
            Some(other) => {
                e.push(
                    "recording.on_error",
                    format!("{other:?} is not one of \"continue\", \"close\""),
                );
                OnError::Continue
            }
        },
        subject_key_ref,
        subject_key,
    }
}

pub(super) fn keys(
    e: &mut Errors,
    f: &KeysFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> KeysConfig {
    let mut kek = Vec::new();
    for (i, k) in f.kek.iter().enumerate() {
        let key = format!("keys.kek[{i}]");
        let Some(id) = k.id.clone().filter(|id| !id.is_empty() && id.len() <= 64) else {
            e.push(format!("{key}.id"), "required (1 to 64 characters)");
            continue;
        };
        if kek.iter().any(|x: &KekConfig| x.id == id) {
            e.push(format!("{key}.id"), format!("duplicate KEK id {id:?}"));
        }
        let Some(r) = secret_ref(e, &key, k.env.as_ref(), k.file.as_ref()) else {
            e.push(
                key.clone(),
                "set env or file (base64 of 32 bytes; `voxguard keygen` makes one)",
            );
            continue;
        };
        let which = match r {
            SecretRef::Env(_) => "env",
            SecretRef::File(_) => "file",
        };
        if let Some(bytes) = load_key(e, &format!("{key}.{which}"), &r, env) {
            kek.push(KekConfig {
                id,
                secret_ref: r,
                key: bytes,
            });
        }
    }
    let active = match (&f.active, kek.first()) {
        (Some(a), _) if kek.iter().any(|k| &k.id == a) => Some(a.clone()),
        (Some(a), _) => {
            e.push("keys.active", format!("no [[keys.kek]] with id {a:?}"));
            None
        }
        (None, Some(_)) if kek.len() == 1 => Some(kek[0].id.clone()),
        (None, Some(_)) => {
            e.push(
                "keys.active",
                "required when more than one KEK is configured",
            );
            None
        }
        (None, None) => None,
    };
    KeysConfig { active, kek }
}
