//! dbnode configuration: every setting is an env var and a `--flag` (DESIGN.md).

use std::path::PathBuf;

use protocol::NodeId;

/// dbnode settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "dbnode", version, about = "ringstore storage node")]
pub struct Config {
    /// This node's id, `db-{i}`: primary of partition i, replica of i−1.
    #[arg(long, env = "DB_INSTANCE_ID", default_value = "db-0")]
    pub db_instance_id: NodeId,
    /// RocksDB directory.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://localhost:4222")]
    pub nats_url: String,
    /// NATS user (with `NATS_PASSWORD`); unset = no authentication.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Number of partitions (and nodes) in the ring.
    #[arg(long, env = "PARTITIONS", default_value_t = 3)]
    pub partitions: u32,
    /// Do not run: exit 0 if the live node with this id is ready, 1 otherwise (for container
    /// healthchecks).
    #[arg(long)]
    pub check: bool,
    /// Logging.
    #[command(flatten)]
    pub log: telemetry::LogConfig,
}
