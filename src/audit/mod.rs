//! The tamper-evident audit log: who did what, when, to which data. The chain format is in `chain.rs`.
pub mod chain;
pub mod log;
pub mod report;

use crate::config::Config;
use crate::keys::KeyBytes;

/// The chain's MAC key and the checkpoint signing seed of `config`, or development keys generated
/// into `data_dir` (0600, with a warning). The public key is written beside them
/// (`data_dir/audit-signing.pub`, base64) for auditors.
pub fn keys(config: &Config) -> Result<(KeyBytes, KeyBytes), String> {
    let dir = &config.server.data_dir;
    let mac = match &config.audit.key {
        Some(k) => k.clone(),
        None => crate::recording::dev_key(dir, "dev-audit.key", "no audit.key is configured")?,
    };
    let seed = match &config.audit.signing_key {
        Some(k) => k.clone(),
        None => crate::recording::dev_key(
            dir,
            "dev-audit-signing.key",
            "no audit.signing_key is configured",
        )?,
    };
    Ok((mac, seed))
}

/// The Ed25519 public key that verifies the checkpoints signed with `seed`.
pub fn public_key_bytes(seed: &KeyBytes) -> Vec<u8> {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.expose())
        .expect("a 32-byte seed");
    pair.public_key().as_ref().to_vec()
}

/// The same, base64, as auditors receive it.
pub fn public_key(seed: &KeyBytes) -> String {
    crate::admission::signature::encoding::to_base64(&public_key_bytes(seed))
}

/// SHA-256 of the effective configuration as `check` prints it (secrets appear only as references).
pub fn config_digest(config: &Config) -> String {
    crate::admission::signature::encoding::to_hex(&crate::admission::signature::encoding::sha256(
        config.to_toml().as_bytes(),
    ))
}

/// A keyed hash of an identifier (stream ids; client addresses are logged as they are): 16 bytes hex.
pub fn keyed_id(key: &KeyBytes, id: &str) -> String {
    crate::admission::signature::encoding::to_hex(&crate::keys::keyed_hash(key, id)[..16])
}
