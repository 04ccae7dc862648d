//! The partition's writer (docs/design.md "Write path"): one task owns every
//! write of the partition, and [`super::decision`] decides each one. Writes arrive over a
//! channel; writes to one record run one at a time, writes to different records concurrently,
//! each append conditional on **its record's latest log entry**
//! (`Nats-Expected-Last-Subject-Sequence`). So whichever node writes — the
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
use protocol::{timing, LogEntry, NodeId, PartitionId, ProtocolError, Response, WriteRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::decision::{resolve, unavailable, Known, Learned};
use crate::log::Log;
use crate::storage::Storage;

/// How many writes may wait for the writer before senders wait.
const QUEUE: usize = 4096;
/// A write waiting for its answer.
struct Job {
    request: WriteRequest,
    reply: oneshot::Sender<Response>,
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
        committed: mpsc::Sender<(u64, LogEntry)>,
    ) -> Self {
        let (jobs, inbox) = mpsc::channel(QUEUE);
        let task = WriterTask {
            partition,
            node,
            storage,
            log,
            applied,
            committed,
            overlay: HashMap::new(),
            order: VecDeque::new(),
            busy: HashMap::new(),
            running: FuturesUnordered::new(),
        };
        tokio::spawn(task.run(inbox));
        Self { jobs }
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

struct WriterTask<L> {
    partition: PartitionId,
    node: NodeId,
    storage: Storage,
    log: Arc<L>,
    /// The sequence the tailer has applied to storage.
    applied: watch::Receiver<u64>,
    /// Entries this writer committed, for the tailer to apply without reading them back.
    committed: mpsc::Sender<(u64, LogEntry)>,
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

    /// Starts `job` (its record has no write running), or answers at once a request already
    /// applied or past its deadline; only a started write marks its record busy.
    fn start(&mut self, job: Job) {
        let request = &job.request;
        let base = if timing::remaining(request.deadline).is_none() {
            Err(unavailable("the request's deadline passed"))
        } else {
            self.base(request).unwrap_or_else(|e| {
                Err(Response::new(
                    Err(ProtocolError::Internal(e.to_string())),
                    0,
                ))
            })
        };
        let base = match base {
            Ok(base) => base,
            Err(answer) => {
                let _ = job.reply.send(answer);
                return;
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
        let learned = match done.learned {
            Learned::Committed(known, entry) => {
                // Handed to the tailer, which applies it at once if it is the next entry: the
                // answer waits for this copy's apply, and reading the entry back would cost a
                // round trip to the log. Only a shortcut: a full channel drops it, and the
                // tailer reads the log instead.
                let _ = self.committed.try_send((known.seq, entry));
                Learned::Latest(known)
            }
            other => other,
        };
        match learned {
            Learned::Nothing | Learned::Committed(..) => {}
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

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
