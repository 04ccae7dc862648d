//! The partition's writer (DESIGN.md "Write path", steps 2, 4 and 7): one task owns every
//! write of the partition. Writes arrive over a channel; writes to one record run one at a
//! time, writes to different records concurrently, each append conditional on **its record's
//! latest log entry** (`Nats-Expected-Last-Subject-Sequence`). So whichever node writes — the
//! primary, a replica in takeover, a node resuming from a pause — a decision made on a stale
//! version of the record cannot commit: the append fails, the writer reads the record's latest
//! entry from the log and decides again. A refusal (404, 409, 412) is given only once the
//! state it was decided on is verified to be the record's latest entry in the log.
//!
//! The writer never applies to RocksDB: the tailer applies every entry in log order. The
//! writer remembers the states it committed or read from the log (its *overlay*) until the
//! tailer has applied them, so the next write to a record decides on its newest state.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use protocol::decide::decide;
use protocol::{
    timing, Answer, LogEntry, NodeId, PartitionId, ProtocolError, Reply, Response, User,
    VersionedUser, WriteKind, WriteRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::log::{AppendError, Appended, Log};
use crate::storage::Storage;

/// How many writes may wait for the writer before senders wait.
const QUEUE: usize = 4096;
/// How often one write may find its record moved on and decide again before giving up.
const MAX_DECISIONS: usize = 16;

/// A record's latest state as a writer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    /// The sequence of the record's latest log entry (0: it has none).
    pub seq: u64,
    /// The record; `None` if absent or deleted.
    pub record: Option<User>,
    /// The request that wrote that entry, when known.
    pub request_id: Option<String>,
}

impl Known {
    fn versioned(&self) -> Option<VersionedUser> {
        self.record.clone().map(|user| VersionedUser {
            user,
            version: self.seq,
        })
    }

    fn from_entry(seq: u64, entry: LogEntry) -> Self {
        Self {
            seq,
            record: entry.record,
            request_id: Some(entry.request_id),
        }
    }

    /// The answer to the write that made this state.
    fn outcome(&self) -> Reply {
        match &self.record {
            Some(user) => Reply::User(VersionedUser {
                user: user.clone(),
                version: self.seq,
            }),
            None => Reply::Deleted { version: self.seq },
        }
    }
}

/// A write waiting for its answer.
struct Job {
    request: WriteRequest,
    reply: oneshot::Sender<Response>,
}

/// What a finished write taught the writer about its record.
enum Learned {
    /// Nothing new.
    Nothing,
    /// The record's latest log entry, as of the write.
    Latest(Known),
    /// The write's fate in the log is unknown (the log did not answer): forget what we knew.
    Unknown,
}

/// A write that finished.
struct Finished {
    id: String,
    response: Response,
    learned: Learned,
    reply: oneshot::Sender<Response>,
}

/// The handle through which requests reach a partition's writer.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task of partition `partition` and returns its handle. The task ends
    /// once every handle is dropped and its writes have finished.
    pub(crate) fn spawn<L: Log>(
        partition: PartitionId,
        node: NodeId,
        storage: Storage,
        log: Arc<L>,
        applied: watch::Receiver<u64>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (jobs, inbox) = mpsc::channel(QUEUE);
        let task = WriterTask {
            partition,
            node,
            storage,
            log,
            applied,
            overlay: HashMap::new(),
            order: VecDeque::new(),
            busy: HashMap::new(),
            running: FuturesUnordered::new(),
        };
        (Self { jobs }, tokio::spawn(task.run(inbox)))
    }

    /// Performs `request` and answers it.
    pub(crate) async fn write(&self, request: WriteRequest) -> Response {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { request, reply }).await.is_err() {
            return unavailable("the node is shutting down");
        }
        answer
            .await
            .unwrap_or_else(|_| unavailable("the writer stopped"))
    }
}

fn unavailable(why: impl Into<String>) -> Response {
    Response::new(Err(ProtocolError::Unavailable(why.into())), 0)
}

struct WriterTask<L> {
    partition: PartitionId,
    node: NodeId,
    storage: Storage,
    log: Arc<L>,
    /// The sequence the tailer has applied to storage.
    applied: watch::Receiver<u64>,
    /// States newer than storage may have: committed by us or read from the log.
    overlay: HashMap<String, Known>,
    /// Overlay entries in the order they were learnt, to forget them once applied.
    order: VecDeque<(u64, String)>,
    /// Records with a write running, and the writes waiting behind it.
    busy: HashMap<String, VecDeque<Job>>,
    running: FuturesUnordered<BoxFuture<'static, Finished>>,
}

impl<L: Log> WriterTask<L> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Job>) {
        let mut open = true;
        while open || !self.running.is_empty() {
            tokio::select! {
                job = inbox.recv(), if open => match job {
                    Some(job) => self.admit(job),
                    None => open = false,
                },
                Some(done) = self.running.next(), if !self.running.is_empty() => {
                    self.finish(done);
                }
            }
        }
        debug!(partition = self.partition, "writer stopped");
    }

    /// Starts `job`, or queues it behind the write running on its record.
    fn admit(&mut self, job: Job) {
        let id = job.request.kind.id();
        if let Some(queue) = self.busy.get_mut(id) {
            queue.push_back(job);
        } else {
            self.start(job);
        }
    }

    /// Starts `job` (its record has no write running). Answers at once a request already
    /// applied, or past its deadline.
    fn start(&mut self, job: Job) {
        let request = &job.request;
        if timing::remaining(request.deadline).is_none() {
            let _ = job.reply.send(unavailable("the request's deadline passed"));
            return self.next(request.kind.id().to_owned());
        }
        let base = match self.base(request) {
            Ok(Ok(base)) => base,
            Ok(Err(done)) => {
                let _ = job.reply.send(done);
                return self.next(request.kind.id().to_owned());
            }
            Err(e) => {
                let answer = Err(ProtocolError::Internal(e.to_string()));
                let _ = job.reply.send(Response::new(answer, 0));
                return self.next(request.kind.id().to_owned());
            }
        };
        let id = request.kind.id().to_owned();
        self.busy.entry(id.clone()).or_default();
        let (log, storage) = (self.log.clone(), self.storage.clone());
        let (partition, node) = (self.partition, self.node);
        let Job { request, reply } = job;
        self.running.push(Box::pin(async move {
            // A bug in one write must not take the partition's writer down with it.
            let resolved =
                AssertUnwindSafe(resolve(&*log, &storage, partition, node, base, request))
                    .catch_unwind()
                    .await;
            let (response, learned) = resolved.unwrap_or_else(|_| {
                let answer = Err(ProtocolError::Internal("the write panicked".into()));
                (Response::new(answer, 0), Learned::Unknown)
            });
            Finished {
                id,
                response,
                learned,
                reply,
            }
        }));
    }

    /// The state `request` is decided on first: the newer of the overlay's and storage's. Or
    /// its answer, when storage already holds the outcome of this request id (a retry).
    fn base(
        &self,
        request: &WriteRequest,
    ) -> Result<Result<Known, Response>, crate::storage::StorageError> {
        if let Some(reply) = self.storage.outcome(self.partition, &request.request_id)? {
            debug!(
                partition = self.partition,
                request_id = request.request_id,
                "retry of an applied write"
            );
            let seen = reply.version().unwrap_or(0);
            return Ok(Err(Response::new(Ok(reply), seen)));
        }
        let id = request.kind.id();
        let (seq, record) = self.storage.state(self.partition, id)?;
        Ok(Ok(match self.overlay.get(id) {
            Some(known) if known.seq >= seq => known.clone(),
            _ => Known {
                seq,
                record,
                request_id: None,
            },
        }))
    }

    fn finish(&mut self, done: Finished) {
        match done.learned {
            Learned::Nothing => {}
            Learned::Latest(known) => {
                let newer = self
                    .overlay
                    .get(&done.id)
                    .is_none_or(|k| k.seq <= known.seq);
                if newer {
                    self.order.push_back((known.seq, done.id.clone()));
                    self.overlay.insert(done.id.clone(), known);
                }
            }
            Learned::Unknown => {
                self.overlay.remove(&done.id);
            }
        }
        let _ = done.reply.send(done.response);
        self.forget_applied();
        self.next(done.id);
    }

    /// Drops overlay states that storage has caught up with.
    fn forget_applied(&mut self) {
        let applied = *self.applied.borrow();
        while let Some((seq, _)) = self.order.front() {
            if *seq > applied {
                break;
            }
            let (seq, id) = self.order.pop_front().expect("front exists");
            if self.overlay.get(&id).is_some_and(|k| k.seq == seq) {
                self.overlay.remove(&id);
            }
        }
    }

    /// Starts the next write waiting on record `id`, if any.
    fn next(&mut self, id: String) {
        let Some(mut queue) = self.busy.remove(&id) else {
            return;
        };
        while let Some(job) = queue.pop_front() {
            self.start(job);
            if let Some(waiting) = self.busy.get_mut(&id) {
                waiting.extend(queue);
                return;
            }
        }
    }
}

/// Decides `request` on `base`, appends it conditional on `base` being the record's latest
/// entry, and on a conflict decides again on the latest entry read from the log, until the
/// write commits, is refused on a verified state, or its deadline passes.
async fn resolve<L: Log + ?Sized>(
    log: &L,
    storage: &Storage,
    partition: PartitionId,
    node: NodeId,
    mut base: Known,
    request: WriteRequest,
) -> (Response, Learned) {
    let WriteRequest {
        request_id, kind, ..
    } = &request;
    let id = kind.id();
    for _ in 0..MAX_DECISIONS {
        if base.request_id.as_ref() == Some(request_id) {
            // This request's own entry is the record's latest: it committed before.
            let reply = base.outcome();
            return (Response::new(Ok(reply), base.seq), Learned::Latest(base));
        }
        if timing::remaining(request.deadline).is_none() {
            // The sender has moved on (to the other copy); deciding again now could apply the
            // request after it was answered elsewhere.
            return (
                unavailable("the request's deadline passed"),
                Learned::Nothing,
            );
        }
        let mut entry = LogEntry {
            id: id.to_owned(),
            record: None,
            writer: node,
            request_id: request_id.clone(),
        };
        match decide(base.versioned().as_ref(), kind) {
            Ok(record) => {
                entry.record = record;
                match log.append(&entry, base.seq).await {
                    Ok(Appended::Stored(seq)) => {
                        let known = Known::from_entry(seq, entry);
                        return (
                            Response::new(Ok(known.outcome()), seq),
                            Learned::Latest(known),
                        );
                    }
                    Ok(Appended::Duplicate(seq)) => {
                        let answer = committed_before(log, storage, partition, &request, seq).await;
                        return (Response::new(answer, seq), Learned::Unknown);
                    }
                    Err(AppendError::Conflict) => {
                        debug!(
                            partition,
                            id,
                            expected = base.seq,
                            "the record moved on; deciding again"
                        );
                        match latest(log, id).await {
                            Ok(known) => base = known,
                            Err(e) => return (unavailable(e.0), Learned::Unknown),
                        }
                    }
                    Err(AppendError::Unavailable(e)) => return (unavailable(e), Learned::Unknown),
                }
            }
            Err(refusal) => {
                let fresh = match latest(log, id).await {
                    Ok(known) => known,
                    Err(e) => return (unavailable(e.0), Learned::Nothing),
                };
                let verified = fresh.seq == base.seq;
                base = fresh;
                if !verified || base.request_id.as_ref() == Some(request_id) {
                    continue;
                }
                // A retry refused by its own effect (it committed, and a newer write has
                // superseded its entry since) is told apart by the log's duplicate window.
                match log.find_request(&entry).await {
                    Ok(Some(seq)) => {
                        let answer = committed_before(log, storage, partition, &request, seq).await;
                        return (
                            Response::new(answer, seq.max(base.seq)),
                            Learned::Latest(base),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => return (unavailable(e.0), Learned::Latest(base)),
                }
                let seen = base.seq;
                return (Response::new(Err(refusal), seen), Learned::Latest(base));
            }
        }
    }
    (
        unavailable("the record kept changing under this write"),
        Learned::Nothing,
    )
}

/// The record's latest entry, from the log.
async fn latest<L: Log + ?Sized>(log: &L, id: &str) -> Result<Known, crate::log::LogError> {
    Ok(match log.latest(id).await? {
        Some((seq, entry)) => Known::from_entry(seq, entry),
        None => Known {
            seq: 0,
            record: None,
            request_id: None,
        },
    })
}

/// The answer to a request the log says an earlier attempt committed at `seq`: its stored
/// outcome, else the entry if it is still the record's latest, else what the request itself
/// determines (a create's record, a delete). An update superseded before any copy kept its
/// outcome has no answer left to give: it is reported unavailable, never applied again.
async fn committed_before<L: Log + ?Sized>(
    log: &L,
    storage: &Storage,
    partition: PartitionId,
    request: &WriteRequest,
    seq: u64,
) -> Answer {
    if let Ok(Some(reply)) = storage.outcome(partition, &request.request_id) {
        return Ok(reply);
    }
    if let Ok(Some((at, entry))) = log.latest(request.kind.id()).await {
        if at == seq {
            return Ok(Known::from_entry(at, entry).outcome());
        }
    }
    match &request.kind {
        WriteKind::Create { user } => Ok(Reply::User(VersionedUser {
            user: user.clone(),
            version: seq,
        })),
        WriteKind::Delete { .. } => Ok(Reply::Deleted { version: seq }),
        WriteKind::Update { .. } => Err(ProtocolError::Unavailable(format!(
            "this request was applied at {seq} and has been superseded since; its result is \
             no longer known"
        ))),
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
