//! `voxguard audit verify [FILES…]`: checks the audit chain with the audit key (every entry) or with
//! the public key alone (`--public-key`: the checkpoints, and the hash chain between them).

use std::path::PathBuf;

use clap::Subcommand;

use crate::audit::chain::{Verdict, verify};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the audit log: `ok: N entries, last checkpoint …`, or the first bad entry (exit 1), or an
    /// unsealed tail (exit 2: still running, or cut).
    Verify {
        /// The files, oldest first (default: every file in the config's audit directory).
        files: Vec<PathBuf>,
        /// Verify with this Ed25519 public key (base64) only, without the audit key.
        #[arg(long)]
        public_key: Option<String>,
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// The compliance report for a period (RFC 3339 times, UTC), from the verified audit log, as JSON.
    Report {
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value = "9999")]
        to: String,
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Print the public key (base64) that verifies the checkpoints, for auditors.
    PublicKey {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
}

pub fn run(cmd: AuditCommand, env: &dyn Fn(&str) -> Option<String>) -> Result<i32, String> {
    use base64::Engine as _;
    match cmd {
        AuditCommand::Report { from, to, config } => {
            let c = crate::Config::load(&config, env).map_err(|e| e.to_string())?;
            let (mac, seed) = crate::audit::keys(&c)?;
            let pk = crate::audit::public_key_bytes(&seed);
            let text = crate::audit::log::read_all(&c.audit.dir);
            let report = crate::audit::report::report(&text, mac.expose(), &pk, &from, &to);
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            Ok(if report["chain"]["verified"] == true {
                0
            } else {
                1
            })
        }
        AuditCommand::PublicKey { config } => {
            let c = crate::Config::load(&config, env).map_err(|e| e.to_string())?;
            let (_, seed) = crate::audit::keys(&c)?;
            println!("{}", crate::audit::public_key(&seed));
            Ok(0)
        }
        AuditCommand::Verify {
            files,
            public_key,
            config,
        } => {
            let (mac, pk, files) = match public_key {
                Some(pk) => {
                    let pk = base64::engine::general_purpose::STANDARD
                        .decode(pk.trim())
                        .map_err(|_| "--public-key is not base64".to_string())?;
                    if files.is_empty() {
                        return Err("name the files to verify with --public-key".into());
                    }
                    (None, pk, files)
                }
                None => {
                    let c = crate::Config::load(&config, env).map_err(|e| e.to_string())?;
                    let (mac, seed) = crate::audit::keys(&c)?;
                    let pk = crate::audit::public_key_bytes(&seed);
                    let files = if files.is_empty() {
                        crate::audit::log::files(&c.audit.dir)
                    } else {
                        files
                    };
                    (Some(*mac.expose()), pk, files)
                }
            };
            let mut text = String::new();
            for f in &files {
                text.push_str(
                    &std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
                );
            }
            let verdict = verify(text.lines(), mac.as_ref(), &pk);
            let checkpoint = |c: &Option<(u64, String)>| match c {
                Some((seq, time)) => format!("last checkpoint seq {seq} at {time}"),
                None => "no checkpoint".into(),
            };
            Ok(match verdict {
                Verdict::Ok {
                    entries,
                    last_checkpoint,
                } => {
                    println!("ok: {entries} entries, {}", checkpoint(&last_checkpoint));
                    0
                }
                Verdict::Unsealed {
                    entries,
                    last_checkpoint,
                } => {
                    println!(
                        "unsealed: {entries} entries verify, but the log does not end with a closing checkpoint ({}): still being written, or its tail was cut",
                        checkpoint(&last_checkpoint)
                    );
                    2
                }
                Verdict::Broken { line, seq, why } => {
                    println!(
                        "broken at line {line}{}: {why}",
                        seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
                    );
                    1
                }
            })
        }
    }
}
