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

/// The Ed25519 public key (base64) that verifies the checkpoints signed with `seed`.
pub fn public_key(seed: &KeyBytes) -> String {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.expose())
        .expect("a 32-byte seed");
    crate::admission::signature::encoding::to_base64(pair.public_key().as_ref())
}

/// SHA-256 of the effective configuration as `check` prints it (secrets appear only as references).
pub fn config_digest(config: &Config) -> String {
    crate::admission::signature::encoding::to_hex(&crate::admission::signature::encoding::sha256(
        config.to_toml().as_bytes(),
    ))
}

/// A keyed hash of an identifier (stream ids, client addresses are logged as they are): 16 bytes hex.
pub fn keyed_id(key: &KeyBytes, id: &str) -> String {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose()),
        id.as_bytes(),
    );
    crate::admission::signature::encoding::to_hex(&tag.as_ref()[..16])
}
