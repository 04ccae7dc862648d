//! `ringstore`: the operator's CLI (docs/operations.md). It logs in to NATS as the operator
//! identity (`admin`), reads the partition map, asks the nodes and the logs, and prints a
//! table for people or JSON (`--json`) for scripts. Exit 0: fine; 1: a problem was found (or
//! NATS could not be asked); 2: a usage error.

mod backup;
mod log;
mod perf;
mod status;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// How long one question to NATS (a ping, a stream's info, a log read) may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `request` to a dbnode on `subject` and reads its answer (within [`ASK_TIMEOUT`]).
pub(crate) async fn ask(
    client: &async_nats::Client,
    subject: String,
    request: &impl serde::Serialize,
) -> anyhow::Result<protocol::Response> {
    use anyhow::Context;
    let body = serde_json::to_vec(request)?;
    let answer = tokio::time::timeout(ASK_TIMEOUT, client.request(subject.clone(), body.into()))
        .await
        .with_context(|| format!("{subject}: no answer in time"))?
        .with_context(|| subject.clone())?;
    Ok(serde_json::from_slice(&answer.payload)?)
}

#[derive(Debug, Parser)]
#[command(name = "ringstore", version, about = "Operate a ringstore deployment", long_about = None)]
struct Cli {
    /// NATS: servers, the operator's credentials (`admin`), TLS.
    #[command(flatten)]
    nats: runtime::NatsConfig,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The ring: every node (state, partitions held), every partition (its copies, how far
    /// each has applied its log, the log's end, leader and replicas). Exits 1 when a partition
    /// is not served by all its copies ready, a copy lags, or a log has no leader: usable as a
    /// health check.
    Status,
    /// The replication logs as people read them.
    #[command(subcommand)]
    Log(LogCommand),
    /// Every copy of every partition compared with its log: a digest per copy and the records
    /// that differ. Records written while it runs are counted, not compared. Exits 1 when a
    /// copy differs or cannot be read.
    Verify {
        /// Only this partition.
        #[arg(long)]
        partition: Option<protocol::PartitionId>,
    },
    /// A copy of every partition's log, made while writes go on: each log exactly as it was at
    /// the cut the manifest names, with the partition map, record counts and digests, and a
    /// checksum of the whole file.
    Backup {
        /// Where to write it (`-`: standard output).
        file: String,
    },
    /// Loads a backup into a fresh deployment provisioned with the same partition count (its
    /// logs must be empty), then proves it: every partition's log and copies read back have
    /// the manifest's digest. Versions (ETags) start over; Idempotency-Keys are not restored.
    Restore {
        /// The backup (`-`: standard input).
        file: String,
    },
    /// Checks of the running deployment.
    #[command(subcommand)]
    Check(CheckCommand),
}

#[derive(Debug, Subcommand)]
enum CheckCommand {
    /// A bounded write and read load with a PASS/FAIL verdict (exit 0/1), as `etcdctl check
    /// perf`: creates its own records on every partition over NATS, reads each back from its
    /// other copy, deletes them again.
    Perf(perf::PerfArgs),
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Decoded log entries: sequence, time, partition, record id (decoded from the entry's
    /// subject), operation, version, writer, request id. Entries whose subject and payload
    /// disagree, or whose writer does not hold the partition, are marked `suspect`.
    Tail(log::TailArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = cli
        .nats
        .options("ringstore-cli")
        .connection_timeout(ASK_TIMEOUT);
    let client = match cli.nats.connect(options).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("ringstore: cannot connect to NATS ({}): {e}", cli.nats.url);
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Status => status::run(&client, cli.json).await,
        Command::Log(LogCommand::Tail(args)) => log::tail(&client, &args, cli.json).await,
        Command::Verify { partition } => verify::run(&client, partition, cli.json).await,
        Command::Backup { file } => backup::backup(&client, &file).await,
        Command::Restore { file } => backup::restore(&client, &file, cli.json).await,
        Command::Check(CheckCommand::Perf(args)) => perf::run(&client, &args, cli.json).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ringstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
