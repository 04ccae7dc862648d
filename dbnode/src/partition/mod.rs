//! One hosted partition: its local copy in RocksDB, its log, and three parts that never share
//! mutable state — the [`writer`] (one task owns every write), the [`tailer`] (the only code
//! that applies log entries to storage, in log order) and the [`reader`].
//!
//! Two sequences describe the copy: `applied`, the last log entry stored, and `readable`, the
//! sequence up to which the copy is known to equal the log. They differ while the tailer
//! crosses a gap (entries superseded by newer writes to the same record before it read them):
//! until the consumer has delivered everything, a read could miss an acknowledged write, so
//! reads wait for `readable`.

mod decision;
mod reader;
mod tailer;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::{
    timing, NodeId, PartitionId, PresencePartition, ProtocolError, Response, Role, WriteRequest,
};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::log::{LogError, PartitionLog};
use crate::storage::{Storage, StorageError};

pub(crate) use writer::Writer;

/// How long a read waits for the sequence it was asked for before answering `Behind`.
const READ_WAIT: Duration = Duration::from_millis(150);
/// How long a committed write waits for its local apply before answering anyway.
const APPLY_WAIT: Duration = Duration::from_millis(250);
/// Committed entries that may wait for the tailer to take them; more are dropped (the tailer
/// then reads them from the log).
const COMMITTED_QUEUE: usize = 1024;
/// The largest page a scan returns.
const MAX_PAGE: u32 = 1000;

impl From<StorageError> for ProtocolError {
    fn from(e: StorageError) -> Self {
        ProtocolError::Internal(e.to_string())
    }
}

/// A partition hosted by this node.
pub struct Partition {
    /// Which partition.
    pub id: PartitionId,
    /// Our role for it.
    pub role: Role,
    storage: Storage,
    log: PartitionLog,
    applied: watch::Sender<u64>,
    readable: watch::Sender<u64>,
    /// The epoch of the log the copy applies ([`crate::log::LogState::epoch`]).
    epoch: AtomicU64,
    lag: AtomicU64,
    writer: Writer,
    /// Woken when the tailer should read the log now (a catch-up waits for it).
    committed: Notify,
    /// The entries this node's writer committed, for the tailer to apply without reading them
    /// back (taken by the tailer when it starts).
    delivered: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<(u64, protocol::LogEntry)>>>,
    /// When the tailer sent the latest fetch that found nothing left to deliver: the copy had
    /// applied, and could read, everything the log held at that moment.
    drained: watch::Sender<Option<Instant>>,
}

impl Partition {
    /// A partition backed by `storage` and `log`, at the sequence storage has applied, with
    /// its writer task started.
    pub fn new(
        id: PartitionId,
        role: Role,
        node: NodeId,
        storage: Storage,
        log: PartitionLog,
    ) -> Result<Self, StorageError> {
        let applied = watch::Sender::new(storage.applied(id)?);
        // Nothing is readable before the first catch-up has reached the log's end.
        let readable = watch::Sender::new(0);
        let epoch = AtomicU64::new(storage.log_epoch(id)?.unwrap_or(0));
        let (committed, delivered) = tokio::sync::mpsc::channel(COMMITTED_QUEUE);
        let writer = Writer::spawn(
            id,
            node,
            storage.clone(),
            Arc::new(log.clone()),
            applied.subscribe(),
            committed,
        );
        Ok(Self {
            id,
            role,
            storage,
            log,
            applied,
            readable,
            epoch,
            lag: AtomicU64::new(0),
            writer,
            committed: Notify::new(),
            delivered: std::sync::Mutex::new(Some(delivered)),
            drained: watch::Sender::new(None),
        })
    }

    /// The last applied log sequence.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The sequence up to which this copy equals the log.
    pub fn readable(&self) -> u64 {
        *self.readable.borrow()
    }

    /// Role, applied sequence and lag, for presence.
    pub fn status(&self) -> PresencePartition {
        PresencePartition {
            partition: self.id,
            role: self.role,
            applied: self.applied(),
            lag: self.lag.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything in the log when called is applied and readable, or `shutdown`:
    /// until a read of the log sent after the call finds nothing left to deliver. (Not "until
    /// the log's last sequence": an operator who purges a log's last entries leaves a last
    /// sequence that no entry has.)
    pub async fn catch_up(&self, shutdown: &CancellationToken) -> Result<(), LogError> {
        let last = self.log.last_sequence().await?;
        info!(
            partition = self.id,
            from = self.applied(),
            to = last,
            "catching up"
        );
        let since = Instant::now();
        let mut drained = self.drained.subscribe();
        self.committed.notify_one();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = drained.wait_for(|d| d.is_some_and(|at| at >= since)) => {}
        }
        Ok(())
    }

    /// Waits up to `wait` until `seq` is readable. True if it is.
    async fn wait_readable(&self, seq: u64, wait: Duration) -> bool {
        let mut rx = self.readable.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|&r| r >= seq)).await;
        reached.is_ok()
    }

    /// The epoch of the log this copy applies.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Performs a write through the partition's writer. A committed write is answered once
    /// this copy has applied it (or after a short wait), so reads here that follow it need not
    /// wait.
    pub async fn write(&self, request: WriteRequest) -> Response {
        let deadline = request.deadline;
        let response = self.writer.write(request).await;
        if response.answer.is_ok() {
            self.log.hint(response.seen).await;
        }
        if response.answer.is_ok() && self.readable() < response.seen {
            let left = timing::remaining(deadline).unwrap_or_default();
            self.wait_readable(response.seen, APPLY_WAIT.min(left))
                .await;
        }
        Response {
            epoch: self.epoch(),
            ..response
        }
    }

    /// Applies the log to the local copy until `shutdown` ([`tailer`]).
    pub async fn tail(self: Arc<Self>, shutdown: CancellationToken) {
        tailer::run(self, shutdown).await
    }
}
