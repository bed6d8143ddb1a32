//! Encrypted call recordings: the file format, the keystore that holds each recording's data key,
//! the writer behind the media session's recording queue, retention and erasure.

pub mod format;
pub mod keystore;
pub mod lane;
pub mod read;
pub mod write_behind;
pub mod writer;

use std::collections::HashMap;
use std::path::Path;

use crate::config::Config;
use crate::keys::{KeyBytes, KeyRing};

/// Id of the development KEK generated when no `[[keys.kek]]` is configured.
pub const DEV_KEK_ID: &str = "dev";

/// The KEK ring of `config`, or the development KEK in `data_dir` (created 0600 on first use, with a
/// warning) when none is configured.
pub fn key_ring(config: &Config) -> Result<KeyRing, String> {
    if let Some(active) = &config.keys.active {
        let keks = config
            .keys
            .kek
            .iter()
            .map(|k| (k.id.clone(), k.key.clone()))
            .collect();
        return Ok(KeyRing::new(active.clone(), keks));
    }
    let key = dev_key(
        &config.server.data_dir,
        "dev-kek.key",
        "no [[keys.kek]] is configured",
    )?;
    Ok(KeyRing::new(
        DEV_KEK_ID.into(),
        HashMap::from([(DEV_KEK_ID.to_string(), key)]),
    ))
}

/// The subject-hash key of `config`, or a development one in `data_dir`.
pub fn subject_key(config: &Config) -> Result<KeyBytes, String> {
    match &config.recording.subject_key {
        Some(k) => Ok(k.clone()),
        None => dev_key(
            &config.server.data_dir,
            "dev-subject.key",
            "no recording.subject_key is configured",
        ),
    }
}

pub(crate) fn dev_key(data_dir: &Path, name: &str, why: &str) -> Result<KeyBytes, String> {
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return KeyBytes::from_base64(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    writer::create_private_dir(data_dir)?;
    let key = KeyBytes::random();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
    f.write_all(key.to_base64().as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    tracing::warn!(path = %path.display(), "{why}: generated a development key; configure real keys in production");
    Ok(key)
}

/// Deletes recordings whose retention has passed: the keystore entry first (that alone makes the data
/// unreadable everywhere), then the file. Returns how many went.
pub fn sweep_expired(keystore: &keystore::Keystore, now_ms: i64) -> usize {
    let Ok(expired) = keystore.expired(now_ms) else {
        return 0;
    };
    let mut n = 0;
    for e in expired {
        if keystore.delete(&e.id).unwrap_or(false) {
            let _ = std::fs::remove_file(&e.path);
            n += 1;
        }
    }
    n
}
