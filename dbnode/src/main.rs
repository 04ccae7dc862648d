//! `dbnode`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // First of all, so that a SIGTERM at any later point is a graceful shutdown.
    let shutdown = CancellationToken::new();
    let signals = Signals::install();
    let config = dbnode::Config::parse();
    if config.check {
        return match dbnode::check(&config).await {
            true => std::process::ExitCode::SUCCESS,
            false => std::process::ExitCode::FAILURE,
        };
    }
    let _log_guard = config.log.init(&config.db_instance_id.to_string());
    if config.provision {
        return match dbnode::provision(&config, shutdown_on(signals)).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dbnode --provision: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    tokio::spawn(signals.cancel_on_first(shutdown.clone()));
    match dbnode::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dbnode failed");
            eprintln!("dbnode: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A token cancelled by the first signal.
fn shutdown_on(signals: Signals) -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(signals.cancel_on_first(token.clone()));
    token
}

/// SIGINT and SIGTERM, caught from the moment [`Signals::install`] returns.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    async fn cancel_on_first(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        shutdown.cancel();
    }
}
