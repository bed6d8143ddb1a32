//! `voxguard keygen`, `voxguard keys rewrap` and `voxguard recording list|verify|decrypt|erase`:
//! operating the recordings of a config's `[recording]` directory and keystore. Safe while the proxy
//! runs (the keystore is SQLite in WAL mode).

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Config;
use crate::keys::{KeyBytes, keyed_hash};
use crate::recording::format::Integrity;
use crate::recording::keystore::Keystore;
use crate::recording::read::decrypt;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Re-wrap every recording's data key under the active KEK, so an old KEK can be retired.
    Rewrap {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RecordingCommand {
    /// List recordings: id, created, duration, KEK id, size, state.
    List {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Authenticate every chunk of a recording file: complete, truncated after chunk N, or the first bad chunk.
    Verify {
        file: PathBuf,
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Decrypt to a two-channel WAV (caller, backend); `--events` writes the non-audio timeline as JSON Lines.
    Decrypt {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        events: Option<PathBuf>,
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Erase every recording of a data subject: keystore entries (crypto-shredding every copy) and files.
    Erase {
        #[arg(long)]
        subject: String,
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
}

fn load(
    config: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Keystore), String> {
    let c = Config::load(config, env).map_err(|e| e.to_string())?;
    let ks = Keystore::open(&c.recording.dir.join("keystore.sqlite")).map_err(|e| e.to_string())?;
    Ok((c, ks))
}

/// `voxguard keygen`: a new KEK for a secret store, as `id` and `key` lines. The id defaults to
/// `k` + today's date (UTC), so rotations sort.
pub fn keygen(id: Option<String>) -> i32 {
    let id = id.unwrap_or_else(|| {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        format!("k{y:04}{m:02}{d:02}")
    });
    let key = KeyBytes::random();
    println!("id = {id}");
    println!("key = {}", &*key.to_base64());
    0
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn run_keys(cmd: KeysCommand, env: &dyn Fn(&str) -> Option<String>) -> Result<i32, String> {
    let KeysCommand::Rewrap { config } = cmd;
    let (c, ks) = load(&config, env)?;
    let ring = crate::recording::key_ring(&c)?;
    let (done, stuck) = ks.rewrap(&ring).map_err(|e| e.to_string())?;
    println!(
        "rewrapped {done} recording(s) under KEK {:?}",
        ring.active_id()
    );
    for id in &stuck {
        eprintln!("{id}: its KEK is not configured; left as it is");
    }
    Ok(if stuck.is_empty() { 0 } else { 1 })
}

pub fn run(cmd: RecordingCommand, env: &dyn Fn(&str) -> Option<String>) -> Result<i32, String> {
    match cmd {
        RecordingCommand::List { config } => {
            let (_, ks) = load(&config, env)?;
            println!(
                "{:<32}  {:<24}  {:>9}  {:<8}  {:>10}  state",
                "id", "created (UTC ms)", "duration", "kek", "bytes"
            );
            for e in ks.list().map_err(|e| e.to_string())? {
                println!(
                    "{:<32}  {:<24}  {:>8.1}s  {:<8}  {:>10}  {}",
                    e.id,
                    e.created_ms,
                    e.duration_ms as f64 / 1000.0,
                    e.wrapped.kek_id,
                    e.bytes,
                    e.state
                );
            }
            Ok(0)
        }
        RecordingCommand::Verify { file, config } => {
            let (c, ks) = load(&config, env)?;
            let ring = crate::recording::key_ring(&c)?;
            let d = decrypt(&file, &ks, &ring).map_err(|e| e.to_string())?;
            println!("{}", d.integrity);
            Ok(match d.integrity {
                Integrity::Complete { .. } => 0,
                Integrity::Truncated { .. } => 2,
                _ => 1,
            })
        }
        RecordingCommand::Decrypt {
            file,
            out,
            events,
            config,
        } => {
            let (c, ks) = load(&config, env)?;
            let ring = crate::recording::key_ring(&c)?;
            let d = decrypt(&file, &ks, &ring).map_err(|e| e.to_string())?;
            std::fs::write(&out, d.wav()).map_err(|e| format!("{}: {e}", out.display()))?;
            if let Some(path) = events {
                std::fs::write(&path, d.events_jsonl())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            eprintln!("{}: {}", file.display(), d.integrity);
            Ok(0)
        }
        RecordingCommand::Erase { subject, config } => {
            let (c, ks) = load(&config, env)?;
            let key = crate::recording::subject_key(&c)?;
            let entries = ks
                .by_subject(&keyed_hash(&key, &subject))
                .map_err(|e| e.to_string())?;
            for e in &entries {
                ks.delete(&e.id).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(&e.path);
            }
            println!("erased {} recording(s)", entries.len());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_424), (2025, 12, 2));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
