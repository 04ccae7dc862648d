//! `dbnode`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = dbnode::Config::parse();
    if config.check {
        return match dbnode::check(&config).await {
            true => std::process::ExitCode::SUCCESS,
            false => std::process::ExitCode::FAILURE,
        };
    }
    let _log_guard = config.log.init(&config.db_instance_id.to_string());
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    match dbnode::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dbnode failed");
            eprintln!("dbnode: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}
