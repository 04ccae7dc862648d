//! One hosted partition: its local copy, its log, and the write path (DESIGN.md steps 2–4,7).
//!
//! Writes are decided and sent in one order per partition (the `pipeline` lock) and several
//! may await their log acknowledgement at once; each append expects the last sequence and
//! message id of its predecessor, so a chain commits whole or breaks at the first foreign
//! entry. Applies (from our own writes and from the log tailer) are serialised by `apply_lock`
//! and skip sequences already applied, so the two sources never double-apply or reorder. The
//! primary and a takeover replica run the same write path: the log decides who commits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use protocol::decide::decide;
use protocol::{
    Answer, CountRequest, GetRequest, LogEntry, NodeId, PartitionId, PresencePartition,
    ProtocolError, Reply, Role, ScanRequest, User, VersionedUser, WriteRequest,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::log::{AppendError, PartitionLog, PendingAppend};
use crate::storage::{Storage, StorageError};

/// How long a replica read waits for the sequence it was asked for before answering `Behind`.
const READ_WAIT: Duration = Duration::from_millis(150);
/// How long a writer waits for the tailer to catch up after losing the sequence race.
const CATCH_UP_WAIT: Duration = Duration::from_millis(1500);
/// How many of a partition's latest writes keep their outcome for idempotent retries.
pub const OUTCOME_RETENTION: u64 = 1_000_000;
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
    pipeline: tokio::sync::Mutex<Pipeline>,
    progress: Arc<Notify>,
    apply_lock: Mutex<()>,
}

/// The writer's appends that are sent and not yet answered.
#[derive(Default)]
struct Pipeline {
    /// Sequence and request id the newest sent append will have if it commits; the next
    /// append names it as its predecessor. `None`: start a new chain at the applied sequence.
    tail: Option<(u64, String)>,
    /// Appends sent and not yet answered.
    in_flight: usize,
    /// The record states those appends produce, by record id, so that later writes are
    /// decided against them.
    pending: HashMap<String, (u64, Option<User>)>,
    /// Request ids of those appends.
    requests: HashSet<String>,
}

/// What the write path does next.
enum Step {
    /// Answer now (a retry of a write already applied).
    Answer(Reply),
    /// The write is refused against the current state (exists, not found, version).
    Refused(ProtocolError, LogEntry),
    /// Wait for the pipeline to move, then try again.
    Wait(std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>),
    /// The entry is on its way to the log, as sequence `seq` if it commits.
    Sent {
        entry: LogEntry,
        seq: u64,
        pending: PendingAppend,
    },
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
            pipeline: tokio::sync::Mutex::default(),
            progress: Arc::new(Notify::new()),
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

    /// Marks `seq` applied without changing any record (an entry that does not decode).
    fn skip(&self, seq: u64) -> Result<(), StorageError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.storage.skip(self.id, seq)? {
            self.applied.send_replace(seq);
        }
        Ok(())
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

    /// Validates `req` against the local state and the writes still in flight, commits it to
    /// the log, applies it, and answers. Appends are pipelined: a write is sent while earlier
    /// ones await their acknowledgement, chained to its predecessor, so a partition commits
    /// many writes per log round trip and still in one order. A request id already applied,
    /// or found in the log, answers its first outcome.
    pub async fn write(&self, req: WriteRequest) -> Answer {
        for _ in 0..MAX_ATTEMPTS {
            let (entry, sent_as, pending) = match self.send(&req).await? {
                Step::Answer(reply) => return Ok(reply),
                Step::Wait(progress) => {
                    let _ = tokio::time::timeout(CATCH_UP_WAIT, progress).await;
                    continue;
                }
                Step::Sent {
                    entry,
                    seq,
                    pending,
                } => (entry, seq, pending),
                Step::Refused(refusal, entry) => {
                    // A retry of a write that committed, whose outcome this copy never saw (the
                    // entry was superseded before it tailed it), is refused by its own effect:
                    // the log's duplicate window tells the two apart.
                    if let Some(seq) = self.log.find_request(&entry).await.ok().flatten() {
                        return self.committed_before(&req, seq).await;
                    }
                    // Refuse only on the log's latest state: a copy still applying entries
                    // (a takeover replica, a primary back from a pause) decides again after.
                    let last = self.log_end().await?;
                    if self.applied() >= last {
                        return Err(refusal);
                    }
                    self.catch_up_to(last).await?;
                    continue;
                }
            };
            let committed = pending.committed().await;
            if let Ok(seq) = committed {
                self.apply_own(seq, &entry).await?;
            }
            self.finish(&entry, sent_as, committed.is_ok()).await;
            match committed {
                Ok(seq) => return Ok(entry.outcome(seq)),
                Err(AppendError::Conflict) => {
                    let last = self.log_end().await?;
                    debug!(partition = self.id, last, "lost the sequence race");
                    self.catch_up_to(last).await?;
                }
                Err(AppendError::Duplicate(seq)) => return self.committed_before(&req, seq).await,
                Err(AppendError::Unavailable(e)) => return Err(ProtocolError::Unavailable(e)),
            }
        }
        Err(ProtocolError::Unavailable(
            "too many concurrent writers".into(),
        ))
    }

    /// The sequence of the log's newest entry.
    async fn log_end(&self) -> Result<u64, ProtocolError> {
        let last = self.log.last_sequence().await;
        last.map_err(|e| ProtocolError::Unavailable(e.to_string()))
    }

    /// Waits (bounded) until the log up to `last` is applied.
    async fn catch_up_to(&self, last: u64) -> Result<(), ProtocolError> {
        if self.wait_applied(last, CATCH_UP_WAIT).await {
            Ok(())
        } else {
            Err(ProtocolError::Unavailable(
                "catching up with the log".into(),
            ))
        }
    }

    /// Decides `req` and sends its log entry, under the pipeline lock so that sends keep the
    /// order in which they were decided.
    async fn send(&self, req: &WriteRequest) -> Result<Step, ProtocolError> {
        let mut pipe = self.pipeline.lock().await;
        if let Some(outcome) = self.storage.outcome(self.id, &req.request_id)? {
            debug!(
                partition = self.id,
                request_id = req.request_id,
                "retry of applied write"
            );
            return Ok(Step::Answer(outcome));
        }
        // An earlier attempt of this request is in flight, or the chain broke and appends
        // sent on it have not all failed yet: wait for them.
        if pipe.requests.contains(&req.request_id) || (pipe.tail.is_none() && pipe.in_flight > 0) {
            let progress = self.progress.clone().notified_owned();
            return Ok(Step::Wait(Box::pin(progress)));
        }
        let (expected, previous) = match &pipe.tail {
            Some((seq, request_id)) => (*seq, Some(request_id.clone())),
            None => {
                pipe.pending.clear();
                (self.applied(), None)
            }
        };
        let id = req.kind.id();
        let current = match pipe.pending.get(id) {
            Some((version, record)) => record.clone().map(|user| VersionedUser {
                user,
                version: *version,
            }),
            None => self.storage.get(self.id, id)?,
        };
        let mut entry = LogEntry {
            id: id.to_owned(),
            record: None,
            writer: self.node,
            request_id: req.request_id.clone(),
        };
        match decide(current.as_ref(), &req.kind) {
            Ok(record) => entry.record = record,
            Err(refusal) => return Ok(Step::Refused(refusal, entry)),
        }
        let pending = self
            .log
            .send(&entry, expected, previous.as_deref())
            .await
            .map_err(|e| ProtocolError::Unavailable(e.to_string()))?;
        let seq = expected + 1;
        pipe.tail = Some((seq, req.request_id.clone()));
        pipe.in_flight += 1;
        pipe.pending
            .insert(entry.id.clone(), (seq, entry.record.clone()));
        pipe.requests.insert(req.request_id.clone());
        Ok(Step::Sent {
            entry,
            seq,
            pending,
        })
    }

    /// Applies our own committed entry in log order (its predecessor is ours or applied
    /// already). The tailer may have got there first, or even past it when a newer write to
    /// the same record superseded it in the log before the tailer read it: then the entry's
    /// outcome is remembered without applying it, so a retry still finds it.
    async fn apply_own(&self, seq: u64, entry: &LogEntry) -> Result<(), StorageError> {
        if !self.wait_applied(seq - 1, CATCH_UP_WAIT).await {
            return Ok(()); // the tailer applies it; the log has it
        }
        if self.apply(seq, entry)?.is_none() {
            self.storage
                .remember_outcome(self.id, seq, &entry.request_id, &entry.outcome(seq))?;
        }
        Ok(())
    }

    /// Takes an answered append (sent as sequence `seq`) out of the pipeline. A failure
    /// breaks the chain: the appends sent after it fail too, and the next write starts a new
    /// chain from the applied sequence once they have.
    async fn finish(&self, entry: &LogEntry, seq: u64, committed: bool) {
        let mut pipe = self.pipeline.lock().await;
        pipe.in_flight -= 1;
        pipe.requests.remove(&entry.request_id);
        if !committed {
            pipe.tail = None;
        }
        // The state leaves the overlay unless a later write to the record replaced it; a
        // committed state only once storage has it.
        let ours = pipe.pending.get(&entry.id).is_some_and(|(s, _)| *s == seq);
        if ours && (!committed || self.applied() >= seq) {
            pipe.pending.remove(&entry.id);
        }
        drop(pipe);
        self.progress.notify_waiters();
    }

    /// The answer to a request the log says was committed at `seq` by an earlier attempt: its
    /// stored outcome once applied, or, if a newer write superseded the entry before this copy
    /// saw it, the record as it is now. Never applied a second time.
    async fn committed_before(&self, req: &WriteRequest, seq: u64) -> Answer {
        self.catch_up_to(seq).await?;
        if let Some(outcome) = self.storage.outcome(self.id, &req.request_id)? {
            return Ok(outcome);
        }
        Ok(match self.storage.get(self.id, req.kind.id())? {
            Some(current) => Reply::User(current),
            None => Reply::Deleted { version: seq },
        })
    }

    /// Forgets request outcomes older than [`OUTCOME_RETENTION`] writes, a bounded batch at a
    /// time, so the idempotency table does not grow with the partition's history.
    pub fn prune_outcomes(&self) -> Result<usize, StorageError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.storage
            .prune_outcomes(self.id, OUTCOME_RETENTION, 10_000)
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
                    Err(e) => {
                        // Not ours to interpret: step over it rather than stall every later
                        // entry (and every catch-up waiting for this sequence).
                        warn!(partition = self.id, seq, error = %e, "undecodable log entry; skipped");
                        if let Err(e) = self.skip(seq) {
                            warn!(partition = self.id, seq, error = %e, "skip failed; re-tailing");
                            break;
                        }
                    }
                }
            }
        }
    }
}
