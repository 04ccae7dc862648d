//! `gateway`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First of all, so that a signal at any later point is a graceful shutdown.
    let signals = runtime::Signals::install();
    let config = gateway::Config::parse();
    let _log_guard = config.log.init("gateway");
    gateway::run(config, signals.token()).await
}
