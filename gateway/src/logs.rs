//! The partition logs (JetStream streams `RINGSTORE_P{p}`) as the gateway reads them, never
//! writes them: their identity and end for the change feed ([`crate::feed`]), where they live
//! (leader and replicas on a NATS cluster) and the NATS server the gateway uses, for
//! `/api/cluster` and `/status`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use protocol::{subjects, PartitionId, PartitionMap};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Change feed settings (`MAX_CHANGE_FEEDS`, `CHANGE_FEED_*`).
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// Feeds served at once; more are answered 503.
    pub max_feeds: usize,
    /// Idle time after which a feed sends a keep-alive comment.
    pub keep_alive: Duration,
    /// How long a feed waits for a client that does not read before ending it.
    pub stall: Duration,
    /// How long a feed the gateway ended may take to hand its last events and its `end` to
    /// the connection before the connection is closed (`WRITE_TIMEOUT_MS`).
    pub end_grace: Duration,
}

/// Read access to the logs, and the change feeds' shared limits.
pub struct Logs {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
    pub(crate) map: Arc<PartitionMap>,
    pub(crate) limits: FeedLimits,
    /// One permit per open feed.
    pub(crate) slots: Arc<Semaphore>,
    /// Per partition, the highest sequence a commit hint named: feeds wait on it instead of
    /// each holding a subscription that would queue hints while its client does not read.
    hints: Arc<Vec<watch::Sender<u64>>>,
    /// Cancelled when the gateway shuts down: feeds end instead of holding it up.
    pub(crate) shutdown: CancellationToken,
}

/// One log as a stream: where it is and where it ends.
#[derive(Debug, Clone)]
pub(crate) struct LogState {
    /// The stream's creation time (ns): a recreated stream has another.
    pub epoch: u64,
    /// The newest entry's sequence.
    pub last: u64,
    /// Records in it (one entry each, tombstones included).
    pub entries: u64,
    /// Leader and replicas, when the stream has them (JetStream in clustered mode).
    pub cluster: Option<stream::ClusterInfo>,
}

/// A partition log in `/api/cluster`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogView {
    /// `RINGSTORE_P{p}`.
    pub stream: String,
    /// Sequence of the newest entry: the partition's latest version.
    pub last_sequence: u64,
    /// Entries held: one per record, tombstones included.
    pub entries: u64,
    /// The NATS server that leads the stream (on a NATS cluster; on one server, that server).
    pub leader: Option<String>,
    /// The stream's other copies (on a NATS cluster).
    pub replicas: Vec<ReplicaView>,
}

/// One follower copy of a stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// The NATS server holding it.
    pub server: String,
    /// Caught up with the leader.
    pub current: bool,
    /// Unreachable.
    pub offline: bool,
    /// Entries behind the leader.
    pub lag: u64,
}

/// The NATS server this gateway is connected to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NatsView {
    /// Connected now.
    pub connected: bool,
    /// The server's name.
    pub server: String,
    /// Its version.
    pub version: String,
    /// Its cluster's name, on a NATS cluster.
    pub cluster: Option<String>,
    /// The other servers it advertises to clients (a cluster's members).
    pub peers: Vec<String>,
}

impl Logs {
    /// Read access through `client` (whose identity may read the logs' streams), asking the
    /// server for at most `timeout` per call.
    pub fn new(
        client: async_nats::Client,
        map: Arc<PartitionMap>,
        timeout: Duration,
        limits: FeedLimits,
        shutdown: CancellationToken,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timeout);
        let hints: Arc<Vec<_>> = Arc::new(map.all().map(|_| watch::Sender::new(0)).collect());
        tokio::spawn(follow_hints(
            client.clone(),
            hints.clone(),
            shutdown.clone(),
        ));
        Self {
            hints,
            client,
            js,
            timeout,
            map,
            slots: Arc::new(Semaphore::new(limits.max_feeds)),
            limits,
            shutdown,
        }
    }

    /// Partition `p`'s commit hints: changed whenever the log may have moved.
    pub(crate) fn hints(&self, p: PartitionId) -> watch::Receiver<u64> {
        self.hints[p as usize].subscribe()
    }

    /// A reader of partition `p`'s log by direct gets, each fetch bounded by the log timeout.
    pub(crate) async fn reader(
        &self,
        p: PartitionId,
    ) -> Result<runtime::LogReader, runtime::LogReadError> {
        runtime::LogReader::open(self.client.clone(), p, self.timeout).await
    }

    /// The state of partition `p`'s log.
    pub(crate) async fn state(&self, p: PartitionId) -> Result<LogState, ApiError> {
        let stream = self
            .js
            .get_stream(subjects::stream_name(p))
            .await
            .map_err(|e| unavailable(p, e))?;
        let info = stream.cached_info();
        Ok(LogState {
            epoch: info.created.unix_timestamp_nanos().max(0) as u64,
            last: info.state.last_sequence,
            entries: info.state.messages,
            cluster: info.cluster.clone(),
        })
    }

    /// Every partition's log state, or the first partition whose log cannot be read.
    pub(crate) async fn states(&self) -> Result<Vec<LogState>, ApiError> {
        futures::future::try_join_all(self.map.all().map(|p| self.state(p))).await
    }

    /// Partition `p`'s log for `/api/cluster`; `None` when it cannot be read now.
    pub async fn view(&self, p: PartitionId) -> Option<LogView> {
        let state = self.state(p).await.ok()?;
        let cluster = state.cluster.unwrap_or_default();
        Some(LogView {
            stream: subjects::stream_name(p),
            last_sequence: state.last,
            entries: state.entries,
            leader: cluster.leader,
            replicas: cluster
                .replicas
                .into_iter()
                .map(|peer| ReplicaView {
                    server: peer.name,
                    current: peer.current,
                    offline: peer.offline,
                    lag: peer.lag.unwrap_or(0),
                })
                .collect(),
        })
    }

    /// The NATS server this gateway is connected to.
    pub fn nats(&self) -> NatsView {
        let info = self.client.server_info();
        NatsView {
            connected: self.client.connection_state() == async_nats::connection::State::Connected,
            server: info.server_name,
            version: info.version,
            cluster: info.cluster,
            peers: info.connect_urls,
        }
    }
}

/// Keeps `hints` at the highest sequence each partition's commit hints named, until
/// `shutdown`; resubscribes after a failure. A hint is never data: it only wakes a feed.
async fn follow_hints(
    client: async_nats::Client,
    hints: Arc<Vec<watch::Sender<u64>>>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    while !shutdown.is_cancelled() {
        let mut subscription = match client.subscribe(subjects::COMMITTED_ALL).await {
            Ok(subscription) => subscription,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the logs' commit hints; feeds poll");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let hint = tokio::select! {
                _ = shutdown.cancelled() => return,
                hint = subscription.next() => hint,
            };
            let Some(hint) = hint else { break };
            // ringstore.committed.{p}.…
            let partition = hint
                .subject
                .split('.')
                .nth(2)
                .and_then(|p| p.parse::<usize>().ok());
            let Some(sender) = partition.and_then(|p| hints.get(p)) else {
                continue;
            };
            let seq = runtime::log_reader::hinted_sequence(&hint).unwrap_or(0);
            sender.send_modify(|latest| *latest = (*latest).max(seq).max(*latest + 1));
        }
    }
}

fn unavailable(p: PartitionId, e: impl std::fmt::Display) -> ApiError {
    ApiError::Protocol(protocol::ProtocolError::Unavailable(format!(
        "the log of partition {p} cannot be read: {e}"
    )))
}
