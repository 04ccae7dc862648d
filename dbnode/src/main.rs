//! `dbnode`: parse the configuration, start the async runtime (`WORKER_THREADS`), set up
//! logging, run until SIGINT/SIGTERM.

use clap::Parser;
use tokio::runtime::Builder;

fn main() -> std::process::ExitCode {
    let config = dbnode::Config::parse();
    let mut builder = match config.worker_threads {
        0 => Builder::new_multi_thread(),
        1 => Builder::new_current_thread(),
        n => {
            let mut pool = Builder::new_multi_thread();
            pool.worker_threads(n);
            pool
        }
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("dbnode: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: dbnode::Config) -> std::process::ExitCode {
    if config.nats_conf {
        return match config.initial_map() {
            Ok(map) => {
                print!("{}", protocol::access::render(&map));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dbnode --nats-conf: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    // First of all, so that a SIGTERM at any later point is a graceful shutdown.
    let signals = runtime::Signals::install();
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
