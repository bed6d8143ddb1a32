//! Thin entry point: args → config → tracing → crypto provider → App → signals → drain → exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use voxguard::cli::{Cli, Command, EXIT_CONFIG, EXIT_FORCED, process_env};
use voxguard::config::{Config, LogFormat};
use voxguard::shutdown::{Signal, Signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("voxguard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Keygen { id } => ExitCode::from(voxguard::cli::recording::keygen(id) as u8),
        Command::Audit(cmd) => exit(voxguard::cli::audit::run(cmd, &process_env)),
        Command::Keys(cmd) => exit(voxguard::cli::recording::run_keys(cmd, &process_env)),
        Command::Recording(cmd) => exit(voxguard::cli::recording::run(cmd, &process_env)),
        Command::Webhook(cmd) => {
            voxguard::install_crypto_provider();
            ExitCode::from(voxguard::cli::webhook::run(cmd, &process_env) as u8)
        }
        Command::Check { config } => match Config::load(&config, &process_env) {
            Ok(c) => {
                println!("# {}: ok\n{}", config.display(), c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Run { config } => {
            let loaded = match Config::load(&config, &process_env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            // Dropped last: the runtime's own shutdown may still log.
            let _flush_logs = init_tracing(&loaded);
            voxguard::install_crypto_provider();
            let rt = runtime(loaded.server.threads());
            match rt.block_on(run(config, loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The proxy's runtime. With one thread, tokio's single-threaded scheduler: a lone worker of the
/// multi-threaded one pays for work-stealing queues and scheduler statistics on every wake-up and
/// never uses them. Measured on one CPU (docs/PERFORMANCE.md, ninth and tenth sessions): ~9 % less
/// CPU per HTTP request, ~6 % less per paced media message, paced plain relays level. Nothing may
/// call `block_in_place`, which it refuses; blocking work (fsync, SQLite, admin file work) goes to
/// the blocking pool, which both schedulers have, capped (`recording::lane`) so that a burst of
/// recorded calls cannot start hundreds of threads.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .max_blocking_threads(voxguard::recording::lane::RUNTIME_BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A maintenance command's exit: its code, or 64 with the error.
fn exit(result: Result<i32, String>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
    }
}

/// Logs go to stderr through the log thread's queue (`logging.rs`): a slow reader of stderr drops
/// lines (counted) instead of stalling requests. The guard flushes the queue at exit.
fn init_tracing(config: &Config) -> Option<voxguard::logging::FlushOnDrop> {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = match voxguard::logging::queued_stderr() {
        Ok((w, g)) => (BoxMakeWriter::new(w), Some(g)),
        // No thread to spare: write inline, as before.
        Err(_) => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: log files, journald and container logs get plain text.
        .with_ansi(ansi)
        .with_writer(writer);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

async fn run(path: std::path::PathBuf, config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let app = voxguard::App::start(&config).await?;
    let admin_reload = app.reload_requested();
    while let Signal::Reload = signals.next_or(&admin_reload).await {
        match Config::load(&path, &process_env) {
            Ok(new) => match app.reload(&new) {
                Ok(()) => {
                    app.record_reload(true);
                    tracing::info!(routes = new.routes.len(), "configuration reloaded");
                }
                Err(e) => {
                    app.record_reload(false);
                    tracing::error!(error = %e, "reload failed; keeping the running configuration");
                }
            },
            Err(e) => {
                app.record_reload(false);
                tracing::error!(error = %e, "reload failed; keeping the running configuration");
            }
        }
    }
    tracing::info!("draining");
    tokio::spawn(async move {
        loop {
            if let Signal::Terminate = signals.next().await {
                tracing::warn!("second signal: exiting now");
                voxguard::logging::flush(); // `exit` skips the flush at the end of `main`
                std::process::exit(EXIT_FORCED);
            }
        }
    });
    let clean = app.shutdown().await;
    tracing::info!(clean, "stopped");
    Ok(())
}
