//! dbnode configuration: every setting is an env var and a `--flag` (README, "Configuration").

use std::path::PathBuf;

use protocol::NodeId;

/// dbnode settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "dbnode", version, about = "ringstore storage node")]
pub struct Config {
    /// This node's id, `db-{i}`: which partitions it holds is the partition map's to say.
    #[arg(long, env = "DB_INSTANCE_ID", default_value = "db-0")]
    pub db_instance_id: NodeId,
    /// RocksDB directory.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// NATS: servers, credentials, TLS.
    #[command(flatten)]
    pub nats: runtime::NatsConfig,
    /// Number of partitions of the deployment, fixed when it is provisioned (the first
    /// partition map is made of it and of `NODES`). A running node follows the map stored in
    /// NATS, whatever this says; it matters only to `--provision`, `--nats-conf` and to a node
    /// that makes the map itself on an open NATS server.
    #[arg(long, env = "PARTITIONS", default_value_t = protocol::DEFAULT_PARTITIONS,
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: u32,
    /// Number of dbnodes of the first partition map (`db-0`..), from 1 to `PARTITIONS`: each is
    /// primary of the partitions `p` with `p mod NODES` = its index and replica of its
    /// predecessor's. Read as `PARTITIONS` is.
    #[arg(long, env = "NODES", default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub nodes: u32,
    /// JetStream's duplicate window on the partition logs, in seconds: how long the log itself
    /// recognises a retried request id. Applies when this node creates a stream.
    #[arg(long, env = "DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub duplicate_window_secs: u64,
    /// Copies of each log stream JetStream keeps (1 on one NATS server, 3 on a cluster). A
    /// stream with another count is refused, as is one with another retention.
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// How long a write's outcome is kept for retries with its request id, in seconds (at most
    /// `OUTCOME_KEEP_WRITES` per partition are kept, whichever is fewer). Outcomes are dropped
    /// by RocksDB compactions, and the node compacts them every quarter of this (1 min–1 h).
    #[arg(long, env = "OUTCOME_RETENTION_SECS", default_value_t = 86_400)]
    pub outcome_retention_secs: u64,
    /// How long the gateways remember an `Idempotency-Key`, in seconds (the age limit of the
    /// key bucket; applies when this node creates it).
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_key_ttl_secs: u64,
    /// The most bytes the Idempotency-Key bucket may hold (keys, fingerprints and first
    /// responses; applies when this node creates it). At the bound a request with a new key is
    /// answered 507 and not done; requests without a key, and retries of kept keys, go on. The
    /// bucket's share of JetStream's store is bounded so that keys can never crowd out the logs.
    #[arg(long, env = "IDEMPOTENCY_KEY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub idempotency_key_max_bytes: i64,
    /// The most write outcomes kept per partition.
    #[arg(long, env = "OUTCOME_KEEP_WRITES", default_value_t = 1_000_000)]
    pub outcome_keep_writes: u64,
    /// Threads that run the node's tasks: 1 (the default) runs them all on the main thread, N
    /// on a pool of N, 0 on one per core. A node's work is a chain of short steps (request,
    /// writer, log append, acknowledgement, tailer, reply), each waking the next; on one thread
    /// none of those wake-ups crosses threads, and the node spends 13–15 % less CPU per write
    /// and 24 % less per read than on two (BENCHMARKS.md). RocksDB's compactions and the
    /// outcome compaction run on threads of their own either way.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Do not run: exit 0 if the live node with this id is ready, 1 otherwise (for container
    /// healthchecks).
    #[arg(long)]
    pub check: bool,
    /// Do not run: create the partition map (from `PARTITIONS` and `NODES`), every
    /// partition's log stream and the Idempotency-Key bucket if they do not exist, then exit
    /// (0 on success; 1 when the stored map has another partition count). Run it once per deployment with an identity
    /// that may create streams (`admin` in nats.conf); the nodes' own identities may not.
    #[arg(long, conflicts_with = "check")]
    pub provision: bool,
    /// Do not run: print the NATS server configuration (accounts, identities and their
    /// permissions) for the first map of `PARTITIONS` and `NODES`, and exit. The repository's `nats.conf` is this
    /// output for the default ring (`scripts/nats-conf` writes it).
    #[arg(long, conflicts_with_all = ["check", "provision"])]
    pub nats_conf: bool,
    /// How long `--provision` keeps retrying (NATS unreachable, no JetStream leader yet, a
    /// refused login) before it gives up and exits 1.
    #[arg(long, env = "PROVISION_TIMEOUT_SECS", default_value_t = 120)]
    pub provision_timeout_secs: u64,
    /// Logging.
    #[command(flatten)]
    pub log: runtime::LogConfig,
}

impl Config {
    /// The first partition map of a deployment made with these settings.
    pub fn initial_map(&self) -> Result<protocol::PartitionMap, protocol::MapError> {
        protocol::PartitionMap::initial(self.partitions, self.nodes)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_and_variables_are_consistent() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
