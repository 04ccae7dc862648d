//! ringstore dbnode: holds partitions in RocksDB and serves them over NATS.
//!
//! A node holds the partitions the partition map (in NATS) gives it: primary of some, replica
//! of its predecessor's. For each it serves
//! `ringstore.part.{p}.{primary|replica}.{get,create,update,delete}` through the NATS service
//! API, tails the partition's JetStream log `RINGSTORE_P{p}`, and announces itself on
//! `ringstore.presence.{node}` every second.
//!
//! Start-up: connect to NATS (retrying) → refuse if the node id is taken → read the partition
//! map → open RocksDB for the partitions it gives this node → ensure the streams → tail every
//! hosted log and catch up → announce `ready` and serve.

mod config;
mod log;
mod partition;
mod presence;
mod service;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
use protocol::{subjects, NodeState, PartitionId, PartitionMap};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use crate::log::PartitionLog;
pub use crate::partition::Partition;
use crate::storage::{Storage, StorageError};

/// Why a dbnode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// RocksDB could not be opened or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// NATS refused something that must work (bad URL, subscription refused).
    #[error("nats: {0}")]
    Nats(#[from] async_nats::Error),
    /// A signal came before the work was done.
    #[error("interrupted")]
    Interrupted,
    /// Another live process serves this node id.
    #[error("another live process already serves {0}; refusing to start a second one")]
    DuplicateNode(protocol::NodeId),
    /// The partition map cannot be used, or does not name this node.
    #[error(transparent)]
    Map(#[from] runtime::map::MapStoreError),
    /// This node is not on the partition map's ring.
    #[error("{0} is not a node of the partition map ({1}); it holds nothing and does not start")]
    NotInMap(protocol::NodeId, String),
    /// `--provision` could not finish in time; why is in the log lines before.
    #[error("provisioning did not finish within {0:?} (PROVISION_TIMEOUT_SECS); the retries' errors are logged above")]
    ProvisionTimedOut(Duration),
}

/// Connects to NATS, retrying in the background until a server is reachable.
pub async fn connect(config: &Config) -> Result<async_nats::Client, NodeError> {
    let options = config
        .nats
        .options(format!("ringstore-{}", config.db_instance_id))
        .retry_on_initial_connect()
        .event_callback(|event| async move { info!(%event, "nats") });
    config.nats.connect(options).await.map_err(NodeError::Nats)
}

/// Retries `attempt` every second until it succeeds or `shutdown` fires.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => warn!(error = %e, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// For container healthchecks: true if the live process serving `DB_INSTANCE_ID` has caught
/// up and serves requests.
pub async fn check(config: &Config) -> bool {
    let options = config
        .nats
        .options(format!("ringstore-{}-check", config.db_instance_id))
        .connection_timeout(Duration::from_secs(2));
    let Ok(client) = config.nats.connect(options).await else {
        return false;
    };
    presence::node_state(&client, config.db_instance_id).await == Some(NodeState::Ready)
}

/// Opens partition `p`'s log as `config` describes it (creating it where this identity may),
/// retrying until it is there and as expected, or `shutdown`.
async fn open_log(
    client: &async_nats::Client,
    config: &Config,
    p: protocol::PartitionId,
    shutdown: &CancellationToken,
) -> Option<PartitionLog> {
    let dedupe = Duration::from_secs(config.duplicate_window_secs);
    let replicas = usize::from(config.stream_replicas);
    retry("opening the log stream", shutdown, || {
        PartitionLog::ensure(client, p, dedupe, replicas)
    })
    .await
}

/// The Idempotency-Key bucket, as [`open_log`] for the logs.
async fn open_key_bucket(
    client: &async_nats::Client,
    config: &Config,
    shutdown: &CancellationToken,
) -> Option<()> {
    let ttl = Duration::from_secs(config.idempotency_key_ttl_secs);
    let replicas = usize::from(config.stream_replicas);
    let max_bytes = config.idempotency_key_max_bytes;
    retry("opening the idempotency-key bucket", shutdown, || {
        log::ensure_idempotency_bucket(client, ttl, max_bytes, replicas)
    })
    .await
}

/// `dbnode --provision`: creates every partition's log stream and the Idempotency-Key bucket
/// where they do not exist yet, so that the nodes need no right to create or change a stream.
/// Retries until NATS answers, `shutdown`, or `PROVISION_TIMEOUT_SECS`: a deployment step
/// that cannot succeed (NATS unreachable, a wrong password) fails instead of waiting forever.
pub async fn provision(config: &Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let limit = Duration::from_secs(config.provision_timeout_secs);
    tokio::time::timeout(limit, provision_all(config, shutdown))
        .await
        .unwrap_or(Err(NodeError::ProvisionTimedOut(limit)))
}

async fn provision_all(config: &Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let client = connect(config).await?;
    let map = partition_map(&client, config, true, &shutdown)
        .await?
        .ok_or(NodeError::Interrupted)?;
    info!(
        bucket = subjects::MAP_BUCKET,
        partitions = map.count(),
        nodes = map.nodes().len(),
        epoch = map.epoch,
        "partition map provisioned"
    );
    for p in map.all() {
        open_log(&client, config, p, &shutdown)
            .await
            .ok_or(NodeError::Interrupted)?;
        info!(
            partition = p,
            stream = subjects::stream_name(p),
            "log stream provisioned"
        );
    }
    open_key_bucket(&client, config, &shutdown)
        .await
        .ok_or(NodeError::Interrupted)?;
    info!(
        bucket = subjects::IDEMPOTENCY_BUCKET,
        "idempotency-key bucket provisioned"
    );
    client
        .drain()
        .await
        .map_err(|e| NodeError::Nats(e.into()))?;
    Ok(())
}

/// The partition map this node follows: the stored one, waited for until `--provision` writes
/// it. On an open NATS server (no `NATS_USER`), where a node may create streams, a node that
/// finds none writes the first one itself (`PARTITIONS`, `NODES`), as it creates the logs;
/// `create` does the same for `--provision`.
async fn partition_map(
    client: &async_nats::Client,
    config: &Config,
    create: bool,
    shutdown: &CancellationToken,
) -> Result<Option<PartitionMap>, NodeError> {
    let initial = config
        .initial_map()
        .map_err(|e| runtime::map::MapStoreError::Invalid(e.to_string()))?;
    let create = create || config.nats.user.is_none();
    let replicas = usize::from(config.stream_replicas);
    let create = create.then_some((&initial, replicas));
    Ok(runtime::map::wait(client, create, shutdown).await?)
}

/// How often the outcomes are compacted: a quarter of their retention, between a minute and an
/// hour, so that an outcome outlives its retention by at most that.
fn outcome_compaction_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// Compacts every hosted partition's request outcomes every `every`, so that the outcome filter
/// drops those past their retention even where RocksDB's own compactions have not reached them
/// (a quiet partition, the bottom level). Runs on a blocking thread: compaction never holds up
/// the node's tasks, nor its shutdown (a compaction cut short by the process's exit is one
/// RocksDB recovers from).
async fn compact_outcomes(
    storage: Storage,
    partitions: Vec<PartitionId>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (storage, partitions) = (storage.clone(), partitions.clone());
        let compaction = tokio::task::spawn_blocking(move || {
            partitions
                .iter()
                .try_for_each(|&p| storage.compact_outcomes(p))
        });
        let compacted = tokio::select! {
            _ = shutdown.cancelled() => return,
            compacted = compaction => compacted,
        };
        match compacted
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(()) => debug!("request outcomes compacted"),
            Err(e) => warn!(error = %e, "compacting request outcomes failed"),
        }
    }
}

/// What a node holds once it has joined the ring: the map, its storage and its partitions.
struct Holdings {
    map: PartitionMap,
    storage: Storage,
    partitions: Vec<Arc<Partition>>,
    retention: storage::OutcomeRetention,
}

/// Reads the map, opens RocksDB for the partitions it gives this node and every one of their
/// logs, and the key bucket; `None` when `shutdown` came first.
async fn join(
    client: &async_nats::Client,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Holdings>, NodeError> {
    let node = config.db_instance_id;
    let Some(map) = partition_map(client, config, false, shutdown).await? else {
        return Ok(None);
    };
    let hosted = map.hosted(node);
    if hosted.is_empty() {
        let ring: Vec<String> = map.nodes().iter().map(ToString::to_string).collect();
        return Err(NodeError::NotInMap(node, ring.join(", ")));
    }
    info!(%node, ?hosted, epoch = map.epoch, data_dir = %config.data_dir.display(), "opening storage");
    let ids: Vec<_> = hosted.iter().map(|(p, _)| *p).collect();
    let retention = storage::OutcomeRetention {
        age: Duration::from_secs(config.outcome_retention_secs),
        writes: config.outcome_keep_writes,
    };
    let storage = Storage::open(&config.data_dir, &ids, retention)?;
    let mut partitions = Vec::new();
    for &(p, role) in &hosted {
        let Some(log) = open_log(client, config, p, shutdown).await else {
            return Ok(None);
        };
        let partition = Partition::new(p, role, node, storage.clone(), log)?;
        partitions.push(Arc::new(partition));
    }
    if open_key_bucket(client, config, shutdown).await.is_none() {
        return Ok(None);
    }
    Ok(Some(Holdings {
        map,
        storage,
        partitions,
        retention,
    }))
}

/// Catches every partition up with its log; false when `shutdown` came first.
async fn catch_up(partitions: &[Arc<Partition>], shutdown: &CancellationToken) -> bool {
    for partition in partitions {
        let caught_up = retry("reading the log's end", shutdown, || {
            partition.catch_up(shutdown)
        })
        .await;
        if caught_up.is_none() || shutdown.is_cancelled() {
            return false;
        }
    }
    true
}

/// Starts every partition's tailer and the outcome compaction on `tasks`.
fn spawn_appliers(
    tasks: &TaskTracker,
    storage: &Storage,
    partitions: &[Arc<Partition>],
    retention: storage::OutcomeRetention,
    shutdown: &CancellationToken,
) {
    for partition in partitions {
        tasks.spawn(partition.clone().tail(shutdown.clone()));
    }
    tasks.spawn(compact_outcomes(
        storage.clone(),
        partitions.iter().map(|p| p.id).collect(),
        outcome_compaction_interval(retention.age),
        shutdown.clone(),
    ));
}

/// Runs a dbnode until `shutdown` fires, then shuts down gracefully: stop taking requests,
/// finish those in flight, drain NATS, flush RocksDB.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let node = config.db_instance_id;
    info!(url = config.nats.url, "connecting to NATS");
    let client = connect(&config).await?;
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if presence::node_state(&client, node).await.is_some() {
        return Err(NodeError::DuplicateNode(node));
    }
    let Some(Holdings {
        map,
        storage,
        partitions,
        retention,
    }) = join(&client, &config, &shutdown).await?
    else {
        return Ok(());
    };

    let tasks = TaskTracker::new();
    let (state, state_rx) = watch::channel(NodeState::CatchingUp);
    let conflict = CancellationToken::new();
    let presence_task = presence::run(
        client.clone(),
        node,
        uuid::Uuid::new_v4().to_string(),
        state_rx,
        partitions.clone(),
        shutdown.clone(),
        conflict.clone(),
    );
    tasks.spawn(async move {
        if let Err(e) = presence_task.await {
            warn!(error = %e, "presence stopped");
        }
    });
    spawn_appliers(&tasks, &storage, &partitions, retention, &shutdown);

    info!(%node, "catching up from the logs");
    let served = if !catch_up(&partitions, &shutdown).await {
        info!(%node, "stopped during catch-up");
        Ok(())
    } else {
        state.send_replace(NodeState::Ready);
        info!(%node, "ready; serving requests");
        service::serve(
            client.clone(),
            node,
            Arc::new(map),
            partitions,
            shutdown.clone(),
        )
        .await
    };

    info!(%node, "shutting down");
    tasks.close();
    tasks.wait().await;
    if let Err(e) = client.drain().await {
        warn!(error = %e, "draining NATS");
    }
    storage.flush()?;
    served?;
    if conflict.is_cancelled() {
        return Err(NodeError::DuplicateNode(node));
    }
    info!(%node, "stopped");
    Ok(())
}
