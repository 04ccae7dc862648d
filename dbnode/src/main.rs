//! `dbnode`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // First of all, so that a SIGTERM at any later point is a graceful shutdown.
    let signals = runtime::Signals::install();
    let config = dbnode::Config::parse();
    if config.check {
        return match dbnode::check(&config).await {
            true => std::process::ExitCode::SUCCESS,
            false => std::process::ExitCode::FAILURE,
        };
    }
    let _log_guard = config.log.init(&config.db_instance_id.to_string());
    if config.provision {
        return match dbnode::provision(&config, signals.token()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dbnode --provision: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match dbnode::run(config, signals.token()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dbnode failed");
            eprintln!("dbnode: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
