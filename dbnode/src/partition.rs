//! One hosted partition: its local copy, its log, and the write path (DESIGN.md steps 2–4,7).
//!
//! Writes are serialised per partition by `write_lock`; applies (from our own writes and from
//! the log tailer) by `apply_lock`, and every apply skips sequences already applied, so the two
//! sources never double-apply or reorder. The primary and a takeover replica run the same
//! write path: the expected-last-sequence rule of the log decides who commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use protocol::decide::decide;
use protocol::{
    Answer, CountRequest, GetRequest, LogEntry, NodeId, PartitionId, PresencePartition,
    ProtocolError, Reply, Role, ScanRequest, WriteRequest,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::log::{AppendError, PartitionLog};
use crate::storage::{Storage, StorageError};

/// How long a replica read waits for the sequence it was asked for before answering `Behind`.
const READ_WAIT: Duration = Duration::from_millis(150);
/// How long a writer waits for the tailer to catch up after losing the sequence race.
const CATCH_UP_WAIT: Duration = Duration::from_millis(1500);
/// The largest page a scan returns.
const MAX_PAGE: u32 = 1000;
/// How often a writer retries after losing the sequence race.
const MAX_ATTEMPTS: usize = 8;

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
    node: NodeId,
    storage: Storage,
    log: PartitionLog,
    applied: watch::Sender<u64>,
    lag: AtomicU64,
    write_lock: tokio::sync::Mutex<()>,
    apply_lock: Mutex<()>,
}

impl Partition {
    /// A partition backed by `storage` and `log`, at the sequence storage has applied.
    pub fn new(
        id: PartitionId,
        role: Role,
        node: NodeId,
        storage: Storage,
        log: PartitionLog,
    ) -> Result<Self, StorageError> {
        let applied = storage.applied(id)?;
        Ok(Self {
            id,
            role,
            node,
            storage,
            log,
            applied: watch::Sender::new(applied),
            lag: AtomicU64::new(0),
            write_lock: tokio::sync::Mutex::new(()),
            apply_lock: Mutex::new(()),
        })
    }

    /// The last applied log sequence.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
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

    fn apply(&self, seq: u64, entry: &LogEntry) -> Result<Option<Reply>, StorageError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.storage.apply(self.id, seq, entry)?;
        if outcome.is_some() {
            self.applied.send_replace(seq);
        }
        Ok(outcome)
    }

    /// Waits until `seq` is applied, for at most `wait`. True if it is.
    async fn wait_applied(&self, seq: u64, wait: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|&applied| applied >= seq)).await;
        reached.is_ok()
    }

    /// Waits, without a time limit, until everything in the log when called is applied.
    pub async fn catch_up(&self) -> Result<(), crate::log::LogError> {
        let last = self.log.last_sequence().await?;
        info!(
            partition = self.id,
            from = self.applied(),
            to = last,
            "catching up"
        );
        self.applied.subscribe().wait_for(|&a| a >= last).await.ok();
        Ok(())
    }

    /// Read-your-writes: waits briefly for `min_seq`, else answers `Behind`.
    async fn ensure_applied(&self, min_seq: u64) -> Result<(), ProtocolError> {
        if min_seq > self.applied() && !self.wait_applied(min_seq, READ_WAIT).await {
            return Err(ProtocolError::Behind {
                applied: self.applied(),
            });
        }
        Ok(())
    }

    /// Serves a read from the local copy.
    pub async fn get(&self, req: GetRequest) -> Answer {
        self.ensure_applied(req.min_seq).await?;
        match self.storage.get(self.id, &req.id)? {
            Some(found) => Ok(Reply::User(found)),
            None => Err(ProtocolError::NotFound),
        }
    }

    /// Serves a page of a LIST from the local copy.
    pub async fn scan(&self, req: ScanRequest) -> Answer {
        self.ensure_applied(req.min_seq).await?;
        let limit = req.limit.clamp(1, MAX_PAGE) as usize;
        let (items, more) = self
            .storage
            .scan(self.id, req.after.as_deref(), limit, req.group)?;
        Ok(Reply::Page { items, more })
    }

    /// Serves a COUNT from the counters kept with the records.
    pub async fn count(&self, req: CountRequest) -> Answer {
        self.ensure_applied(req.min_seq).await?;
        Ok(Reply::Count {
            count: self.storage.count(self.id, req.group)?,
        })
    }

    /// Validates `req` against the local state, commits it to the log with the expected last
    /// sequence, applies it, and answers. A request id already applied answers its first
    /// outcome.
    pub async fn write(&self, req: WriteRequest) -> Answer {
        let _writer = self.write_lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(outcome) = self.storage.outcome(self.id, &req.request_id)? {
                debug!(
                    partition = self.id,
                    request_id = req.request_id,
                    "retry of applied write"
                );
                return Ok(outcome);
            }
            let applied = self.applied();
            let current = self.storage.get(self.id, req.kind.id())?;
            let entry = LogEntry {
                id: req.kind.id().to_owned(),
                record: decide(current.as_ref(), &req.kind)?,
                writer: self.node,
                request_id: req.request_id.clone(),
            };
            match self.log.append(&entry, applied).await {
                Ok(seq) => {
                    let outcome = self.apply(seq, &entry)?;
                    // `None`: the tailer applied our entry first; its outcome is stored.
                    return match outcome {
                        Some(reply) => Ok(reply),
                        None => self
                            .storage
                            .outcome(self.id, &req.request_id)?
                            .ok_or_else(|| {
                                ProtocolError::Internal("committed write has no outcome".into())
                            }),
                    };
                }
                Err(AppendError::Conflict) => {
                    let last = self
                        .log
                        .last_sequence()
                        .await
                        .map_err(|e| ProtocolError::Unavailable(e.to_string()))?;
                    debug!(partition = self.id, applied, last, "lost the sequence race");
                    if !self.wait_applied(last, CATCH_UP_WAIT).await {
                        return Err(ProtocolError::Unavailable(
                            "catching up with the log".into(),
                        ));
                    }
                }
                Err(AppendError::Duplicate(seq)) => return self.committed_before(&req, seq).await,
                Err(AppendError::Unavailable(e)) => return Err(ProtocolError::Unavailable(e)),
            }
        }
        Err(ProtocolError::Unavailable(
            "too many concurrent writers".into(),
        ))
    }

    /// The answer to a request the log says was committed at `seq` by an earlier attempt: its
    /// stored outcome once applied, or, if a newer write superseded the entry before this copy
    /// saw it, the record as it is now. Never applied a second time.
    async fn committed_before(&self, req: &WriteRequest, seq: u64) -> Answer {
        if !self.wait_applied(seq, CATCH_UP_WAIT).await {
            return Err(ProtocolError::Unavailable(
                "catching up with the log".into(),
            ));
        }
        if let Some(outcome) = self.storage.outcome(self.id, &req.request_id)? {
            return Ok(outcome);
        }
        Ok(match self.storage.get(self.id, req.kind.id())? {
            Some(current) => Reply::User(current),
            None => Reply::Deleted { version: seq },
        })
    }

    /// Applies the log to the local copy, from the applied sequence on, until `shutdown`.
    pub async fn tail(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let from = self.applied() + 1;
            let mut entries = match self.log.tail(from).await {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(partition = self.id, error = %e, "cannot tail the log; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            debug!(partition = self.id, from, "tailing the log");
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = entries.next() => item,
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        debug!(partition = self.id, error = %e, "log consumer hiccup");
                        continue;
                    }
                    None => break,
                };
                let Ok(info) = message.info() else { continue };
                let (seq, pending) = (info.stream_sequence, info.pending);
                self.lag.store(pending, Ordering::Relaxed);
                if seq <= self.applied() {
                    continue; // our own write, already applied by the write path
                }
                match serde_json::from_slice::<LogEntry>(&message.payload) {
                    Ok(entry) => {
                        if let Err(e) = self.apply(seq, &entry) {
                            warn!(partition = self.id, seq, error = %e, "apply failed; re-tailing");
                            break;
                        }
                    }
                    Err(e) => warn!(partition = self.id, seq, error = %e, "undecodable log entry"),
                }
            }
        }
    }
}
