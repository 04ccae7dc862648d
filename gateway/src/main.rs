//! `gateway`: parse the configuration, set up logging, run until SIGINT/SIGTERM.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        // First of all, so that a signal at any later point is a graceful shutdown.
        let signals = runtime::Signals::install();
        let config = gateway::Config::parse();
        let _log_guard = config.log.init("gateway");
        gateway::run(config, signals.token()).await
    });
    // `run` returns by SHUTDOWN_TIMEOUT_MS after the signal: whatever still runs then (a
    // connection past the deadline, a name lookup of the NATS client's) is abandoned, not
    // waited for as dropping the runtime would.
    rt.shutdown_background();
    result
}
