//! The tailer (docs/design.md, "Replication"): the only code that applies log entries to the
//! local copy, in log order, each fetched batch in one `WriteBatch` with its last sequence.
//!
//! - **Reading.** The log is read by direct gets from the applied sequence on
//!   ([`runtime::LogReader`]), never through a consumer (docs/security.md). A fetch runs when
//!   the log may have moved: a commit hint from the stream ([`protocol::subjects::committed_filter`]),
//!   a commit of this node's own writer, an identity check that finds the log past the copy,
//!   or a batch that left entries behind.
//! - **Gaps.** The log keeps one entry per record, so an entry superseded before the tailer
//!   read it is gone: the read steps over it. The entry that superseded it was appended
//!   before the step, so once a fetch finds nothing left to deliver (`pending` 0) the copy
//!   has applied it; until then the copy may lack an acknowledged write, and `readable` (what
//!   reads wait for) stays where it was. "Caught up" is that same "nothing left", never "has
//!   reached the log's last sequence", which an operator's purge can leave empty for good.
//! - **Identity.** The copy records the identity of the log it applies (the stream's creation
//!   time). A log that is not the one it knew — recreated, or shorter than what the copy has
//!   applied (a NATS host that lost its unsynced tail) — makes the copy start over from the
//!   log, instead of wedging on sequences that never come or dropping new entries as applied.
//! - **A server behind.** A direct get is answered by the log's copy on the nearest NATS
//!   server, which may store an entry a moment after its leader said it was committed: a fetch
//!   that ends below a sequence the tailer knows to be committed is tried again shortly.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use protocol::LogEntry;
use runtime::{Batch, LogReadError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Partition;
use crate::log::LogState;
use crate::storage::{Step, StorageError};

/// How often a tailer checks that the log is still the one it applies, and whether it has
/// moved past the copy (the fallback when commit hints are lost).
const IDENTITY_CHECK: Duration = Duration::from_millis(500);
/// How many identity checks may wait for an answer at once: one sent while the log's leader is
/// being re-elected can wait the whole log timeout, and the one sent just after the election
/// must not wait behind it.
const CHECKS_IN_FLIGHT: usize = 3;
/// The most log entries fetched, and applied in one RocksDB write, at once.
const BATCH: usize = 256;
/// How long a tailer waits before trying again when the log cannot be read.
const RETRY: Duration = Duration::from_secs(1);
/// The first wait before fetching again when a fetch ended below a sequence known to be
/// committed (the nearest copy of the log is a moment behind its leader), doubled each time.
const BEHIND_RETRY: Duration = Duration::from_millis(2);
/// The longest such wait; past it the sequence is left to the identity checks.
const BEHIND_RETRY_MAX: Duration = Duration::from_millis(128);
/// How long a commit hint waits before it makes a read of the log: this node's own commits
/// are applied without one by then.
const HINT_DELAY: Duration = Duration::from_millis(2);
/// The first wait after a fetch failed (timed out, no responders), doubled up to [`RETRY`].
const FAILED_RETRY: Duration = Duration::from_millis(50);

/// Applies the log to `partition`'s copy until `shutdown`.
pub(super) async fn run(partition: Arc<Partition>, shutdown: CancellationToken) {
    let taken = match partition.delivered.lock() {
        Ok(mut delivered) => delivered.take(),
        Err(_) => None,
    };
    let Some(mut delivered) = taken else {
        warn!(
            partition = partition.id,
            "a second tailer for one partition; not started"
        );
        return;
    };
    while !shutdown.is_cancelled() {
        if let Some((state, _)) = check_identity(&partition).await {
            if tail(&partition, state, &mut delivered, &shutdown)
                .await
                .is_ok()
            {
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Compares the log with the one the copy was applied from, starts the copy over if it is
/// another, and returns the log's state and whether the copy started over; `None` if the log
/// cannot be read.
async fn check_identity(partition: &Partition) -> Option<(LogState, bool)> {
    let p = partition.id;
    // Applied first: the log's end, read after, can only be at or past it.
    let applied = partition.applied();
    let state = match partition.log.state().await {
        Ok(state) => state,
        Err(e) => {
            warn!(partition = p, error = %e, "cannot read the log's state; retrying");
            return None;
        }
    };
    // The epoch storage recorded (0: none yet), as the partition keeps it.
    let known = partition.epoch();
    let mut reset_copy = false;
    let result = match known {
        0 => partition.storage.set_log_epoch(p, state.epoch),
        known if known == state.epoch && state.last >= applied => Ok(()),
        known => {
            warn!(
                partition = p,
                applied,
                log_end = state.last,
                known,
                log = state.epoch,
                "the log is not the one this copy was applied from; rebuilding from it"
            );
            reset_copy = true;
            reset(partition, state.epoch)
        }
    };
    match result {
        Ok(()) => {
            partition.epoch.store(state.epoch, Ordering::Release);
            Some((state, reset_copy))
        }
        Err(e) => {
            warn!(partition = p, error = %e, "cannot record the log identity");
            None
        }
    }
}

fn reset(partition: &Partition, epoch: u64) -> Result<(), StorageError> {
    partition.storage.reset(partition.id, epoch)?;
    partition.readable.send_replace(0);
    partition.applied.send_replace(0);
    Ok(())
}

/// A tail session ended early: start another after [`RETRY`] (the log could not be read, or
/// changed).
struct Retail;

/// What a session knows of the log beyond the copy.
struct Want {
    /// A fetch should run (the log may have moved).
    fetch: bool,
    /// A sequence known to be committed that the copy has not applied yet (0: none).
    target: u64,
    /// When to fetch again (for `target`, or after a failed fetch), and the wait after that.
    retry: Option<(Instant, Duration)>,
    /// The wait the next [`Want::again`] starts from (zero: its `first`).
    backoff: Duration,
    /// The log's end as the latest identity check read it.
    end_seen: u64,
    /// The log's end as an identity check read it before a fetch that then found nothing
    /// left: checks that read the same end need no fetch (its last sequences were purged).
    end_drained: u64,
    /// Fetches that failed in a row.
    failures: u32,
    /// The next fetch must be a batch (it says whether anything is left): a catch-up, or a
    /// log past the copy that hints did not explain.
    drain: bool,
}

impl Want {
    /// Fetch again after `wait` (doubling up to `max`, then leaving it to the checks).
    fn again(&mut self, first: Duration, max: Duration) {
        let wait = if self.backoff.is_zero() {
            first
        } else {
            self.backoff
        };
        if wait <= max {
            self.retry = Some((Instant::now() + wait, wait));
            self.backoff = wait * 2;
        }
    }

    /// Fetch now, a batch.
    fn drain_now(&mut self) {
        self.fetch = true;
        self.drain = true;
    }

    /// The retry is due: fetch if something is still wanted (a failed fetch to repeat, a
    /// known sequence not applied yet).
    fn due(&mut self, applied: u64) {
        self.retry = None;
        if self.failures > 0 || applied < self.target {
            self.fetch = true;
        } else {
            self.backoff = Duration::ZERO;
        }
    }
}

/// A fetch's result.
struct Fetched {
    /// The reader, handed back.
    reader: runtime::LogReader,
    batch: Result<Batch, LogReadError>,
    /// When the fetch was sent.
    sent: Instant,
    /// The log's end as the checks knew it then.
    end: u64,
    /// For an exact read, the sequences it asked for.
    asked: Option<(u64, u64)>,
    /// With a gap open and a batch that found nothing left: the first entry after the batch
    /// as the log's leader holds it (`Ok(None)`: none). Any server of an R3 log answers a
    /// batch, one that is behind too; only the leader's word closes a gap.
    leader_next: Option<Result<Option<u64>, LogReadError>>,
}

/// One session: reads the log from the applied sequence on until an error, a changed log or
/// `shutdown`. The loop only waits; what each event means is [`Session`]'s.
async fn tail(
    partition: &Partition,
    state: LogState,
    delivered: &mut tokio::sync::mpsc::Receiver<(u64, LogEntry)>,
    shutdown: &CancellationToken,
) -> Result<(), Retail> {
    let opened = futures::future::try_join(partition.log.reader(), partition.log.hints()).await;
    let (reader, mut hints) = opened.map_err(|e| {
        warn!(partition = partition.id, error = %e, "cannot read the log; retrying");
        Retail
    })?;
    let mut session = Session::new(partition, state);
    let mut check = tokio::time::interval(IDENTITY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    // Identity checks run beside the reading, never in its way, and beside one another: on a
    // NATS cluster whose stream or meta leader is being re-elected, reading the log's state can
    // take the whole log timeout, and a check sent once the new leader is there answers at once.
    let mut checking = FuturesUnordered::new();
    // The fetch in flight owns the reader and hands it back with its batch.
    let mut reader = Some(reader);
    let mut fetching: Option<futures::future::BoxFuture<'static, Fetched>> = None;
    loop {
        if session.want.fetch && fetching.is_none() {
            if let Some(idle) = reader.take() {
                fetching = Some(session.fetch(idle));
            }
        }
        let retry_at = session.want.retry.map(|(at, _)| at);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick(), if checking.len() < CHECKS_IN_FLIGHT => {
                checking.push(check_identity(partition));
            }
            Some(checked) = checking.next(), if !checking.is_empty() => session.checked(checked)?,
            hint = hints.next() => session.hinted(hint.ok_or(Retail)?),
            Some((seq, entry)) = delivered.recv() => session.delivered(seq, entry)?,
            _ = partition.committed.notified() => session.want.drain_now(),
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                session.want.due(partition.applied());
            }
            done = async { fetching.as_mut().expect("a fetch").await }, if fetching.is_some() => {
                fetching = None;
                let Fetched { reader: idle, batch, sent, end, asked, leader_next } = done;
                reader = Some(idle);
                session.fetched(batch, sent, end, asked, leader_next)?;
            }
        }
    }
}

/// A tail session's state: the gap, what it wants of the log, and what each event does.
struct Session<'a> {
    partition: &'a Partition,
    epoch: u64,
    gap: bool,
    want: Want,
    /// Entries this node's writer committed that could not be applied yet (a hole before
    /// them), by sequence.
    local: std::collections::BTreeMap<u64, LogEntry>,
}

impl<'a> Session<'a> {
    fn new(partition: &'a Partition, state: LogState) -> Self {
        debug!(
            partition = partition.id,
            from = partition.applied() + 1,
            "tailing the log"
        );
        // The copy equals a prefix of the log if it did when the last session ended, or if it
        // has applied up to the log's end (every record's latest entry is at or below it).
        let applied = partition.applied();
        let gap = partition.readable() < applied && applied < state.last;
        settle(partition, gap);
        Self {
            partition,
            epoch: state.epoch,
            gap,
            want: Want {
                fetch: true,
                target: state.last,
                retry: None,
                backoff: Duration::ZERO,
                end_seen: state.last,
                end_drained: 0,
                failures: 0,
                drain: true,
            },
            local: Default::default(),
        }
    }

    /// Starts a fetch from the applied sequence on with `reader`.
    fn fetch(
        &mut self,
        mut reader: runtime::LogReader,
    ) -> futures::future::BoxFuture<'static, Fetched> {
        self.want.fetch = false;
        let (from, sent, end) = (
            self.partition.applied() + 1,
            Instant::now(),
            self.want.end_seen,
        );
        // Sequences known to be committed, a few, and no gap to close: read exactly those.
        // Otherwise a batch, which also says whether anything is left.
        let exact = !self.gap
            && !std::mem::take(&mut self.want.drain)
            && self.want.target >= from
            && self.want.target - from < runtime::log_reader::EXACT_MAX;
        let to = self
            .want
            .target
            .min(from + runtime::log_reader::EXACT_MAX - 1);
        let gap = self.gap;
        Box::pin(async move {
            let (batch, asked) = if exact {
                (reader.fetch_exact(from, to).await, Some((from, to)))
            } else {
                (reader.fetch(from, BATCH).await, None)
            };
            let mut leader_next = None;
            if let Some(found) = batch.as_ref().ok().filter(|b| gap && b.pending == Some(0)) {
                let after = found.messages.last().map_or(from - 1, |m| m.seq);
                leader_next = Some(reader.leader_next(after + 1).await);
            }
            Fetched {
                reader,
                batch,
                sent,
                end,
                asked,
                leader_next,
            }
        })
    }

    /// An identity check answered: a changed log ends the session; a log past the copy (and
    /// past what a drained fetch already saw) makes a fetch.
    fn checked(&mut self, checked: Option<(LogState, bool)>) -> Result<(), Retail> {
        match checked {
            Some((now, false)) if now.epoch == self.epoch => {
                // A target past the log's end was never committed (a hint that lied).
                self.want.target = self.want.target.min(now.last);
                self.want.end_seen = now.last;
                if now.last > self.partition.applied() && now.last > self.want.end_drained {
                    self.want.drain_now();
                }
                Ok(())
            }
            Some(_) => {
                info!(partition = self.partition.id, "re-tailing a changed log");
                Err(Retail)
            }
            None => Ok(()),
        }
    }

    /// A commit hint came. Hints are not trusted for anything but "look": a sequence the copy
    /// has applied needs nothing; any other is read from the log after [`HINT_DELAY`] unless it
    /// has been applied by then (this node's own commits arrive by [`Session::delivered`]
    /// sooner, so the primary reads nothing back). A hint's sequence past the log's end is
    /// dropped at the next identity check.
    fn hinted(&mut self, hint: async_nats::Message) {
        let seq = runtime::log_reader::hinted_sequence(&hint).unwrap_or(u64::MAX);
        if seq <= self.partition.applied() {
            return;
        }
        self.want.target = self.want.target.max(seq);
        if self.want.retry.is_none() && !self.want.fetch {
            self.want.retry = Some((Instant::now() + HINT_DELAY, HINT_DELAY));
        }
    }

    /// This node's writer committed `entry` at `seq`: applied at once if it is the next entry
    /// (or completes a run of them), else kept until the log fills the hole before it.
    fn delivered(&mut self, seq: u64, entry: LogEntry) -> Result<(), Retail> {
        let applied = self.partition.applied();
        self.want.target = self.want.target.max(seq);
        if seq <= applied {
            return Ok(());
        }
        self.local.insert(seq, entry);
        let mut next = applied + 1;
        let mut batch = Vec::new();
        while let Some(entry) = self.local.remove(&next) {
            // The copy holds the record as of `seq_before` if that is within the prefix it
            // holds (no gap).
            let prior_held = !self.gap && entry.seq_before.is_some_and(|b| b < next);
            batch.push((next, Some(entry), prior_held));
            next += 1;
        }
        if let Err(e) = apply(self.partition, &batch) {
            warn!(partition = self.partition.id, error = %e, "apply failed; re-tailing");
            return Err(Retail);
        }
        settle(self.partition, self.gap);
        // A gap to close: only the log can. A hole before what is kept is most often another
        // of this writer's commits, answered out of order: the log is read for it only if it
        // is still missing after [`HINT_DELAY`].
        if self.gap {
            self.want.fetch = true;
        } else if !self.local.is_empty() && self.want.retry.is_none() && !self.want.fetch {
            self.want.retry = Some((Instant::now() + HINT_DELAY, HINT_DELAY));
        }
        Ok(())
    }

    /// A fetch sent at `sent` (when the checks knew the log's end as `end`) came back.
    fn fetched(
        &mut self,
        fetched: Result<Batch, LogReadError>,
        sent: Instant,
        end: u64,
        asked: Option<(u64, u64)>,
        leader_next: Option<Result<Option<u64>, LogReadError>>,
    ) -> Result<(), Retail> {
        let p = self.partition.id;
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(e) => return self.failed(e),
        };
        self.want.failures = 0;
        self.want.retry = None;
        self.want.backoff = Duration::ZERO;
        let stepped_over = asked.is_some() && keep_contiguous(&mut batch, self.partition.applied());
        let confirmed = matches!(leader_next, Some(Ok(None)));
        if let Err(e) = apply_batch(self.partition, &batch, &mut self.gap, confirmed) {
            warn!(partition = p, error = %e, "apply failed; re-tailing");
            return Err(Retail);
        }
        settle(self.partition, self.gap);
        let applied = self.partition.applied();
        self.local.retain(|&seq, _| seq > applied);
        if let Some((_, to)) = asked {
            // An exact read: every sequence asked for was there, or one is missing with later
            // ones present (deleted, or late on the server that answered: a batch tells), or
            // none has reached the copy of the log that answered yet.
            if self.gap || stepped_over {
                self.want.drain_now();
            } else if applied < to {
                self.want.again(BEHIND_RETRY, BEHIND_RETRY_MAX);
            } else {
                self.partition.lag.store(0, Ordering::Relaxed);
            }
            return Ok(());
        }
        if batch.pending != Some(0) {
            self.want.fetch = true;
            return Ok(());
        }
        self.nothing_left(leader_next, sent, end);
        Ok(())
    }

    /// A fetch failed: a closed connection ends the session, anything else is tried again.
    fn failed(&mut self, e: LogReadError) -> Result<(), Retail> {
        let p = self.partition.id;
        if let LogReadError::Nats(e) = e {
            warn!(partition = p, error = %e, "cannot read the log; re-tailing");
            return Err(Retail);
        }
        // An election, a server going away: the next fetch, soon, may find a leader.
        self.want.failures += 1;
        let failures = self.want.failures;
        if failures == 1 || failures.is_power_of_two() {
            warn!(partition = p, error = %e, failures, "reading the log failed; retrying");
        }
        self.want.again(FAILED_RETRY, RETRY);
        Ok(())
    }

    /// A batch found nothing left after it: the copy has drained the log (sent at `sent`, the
    /// checks knowing its end as `end`) unless the leader, asked because a gap was open, holds
    /// more or did not answer.
    fn nothing_left(
        &mut self,
        leader_next: Option<Result<Option<u64>, LogReadError>>,
        sent: Instant,
        end: u64,
    ) {
        match leader_next {
            // The leader holds more than the server that answered: read on.
            Some(Ok(Some(_))) => return self.want.drain_now(),
            Some(Err(e)) => {
                let p = self.partition.id;
                debug!(partition = p, error = %e, "the leader did not confirm the log's end");
                return self.want.again(FAILED_RETRY, RETRY);
            }
            Some(Ok(None)) | None => {}
        }
        self.want.end_drained = self.want.end_drained.max(end);
        self.partition.drained.send_replace(Some(sent));
        if self.partition.applied() < self.want.target {
            self.want.again(BEHIND_RETRY, BEHIND_RETRY_MAX);
        }
    }
}

/// Keeps of an exact read only the run of entries right after `applied` (and any at or below
/// it, which apply skips); true when it dropped some. Each sequence of an exact read may be
/// answered by another server of the log, one that does not have it yet: an absent answer
/// proves nothing, and what follows a missing sequence waits for a batch, which one server
/// answers from its prefix of the log, and which so tells a deleted entry from a late one.
fn keep_contiguous(batch: &mut Batch, applied: u64) -> bool {
    let mut next = applied + 1;
    let answered = batch.messages.len();
    batch.messages.retain(|m| {
        let keep = m.seq <= next;
        next += u64::from(m.seq == next);
        keep
    });
    batch.messages.len() < answered
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Applies a fetched batch (entries past the applied sequence only) in one write; opens the
/// gap when the batch steps over a sequence, closes it when nothing is left to deliver: on the
/// word of the server that answered if the gap opened in this batch (it holds whatever
/// superseded the entries it stepped over), else only once the leader `confirmed` it.
fn apply_batch(
    partition: &Partition,
    fetched: &Batch,
    gap: &mut bool,
    confirmed: bool,
) -> Result<(), StorageError> {
    let p = partition.id;
    let was_open = *gap;
    let mut applied = partition.applied();
    let mut batch = Vec::with_capacity(fetched.messages.len());
    for message in &fetched.messages {
        partition.lag.store(message.pending, Ordering::Relaxed);
        if message.seq <= applied {
            continue;
        }
        if message.seq > applied + 1 && !*gap {
            debug!(
                partition = p,
                applied,
                seq = message.seq,
                "gap in the log; reads wait until its end"
            );
            *gap = true;
        }
        let entry = decode(p, message.seq, &message.payload);
        // Without a gap the copy is the log's prefix up to `applied`; an entry whose record's
        // previous entry is within it finds the record as that entry left it (it was appended
        // on the condition that this was still the latest).
        let prior_held = !*gap
            && entry
                .as_ref()
                .and_then(|e| e.seq_before)
                .is_some_and(|before| before <= applied);
        batch.push((message.seq, entry, prior_held));
        applied = message.seq;
    }
    apply(partition, &batch)?;
    // Nothing left to deliver: every entry that superseded a skipped one (appended before the
    // skip) has been delivered and is in this batch or applied.
    if fetched.pending == Some(0) && (!was_open || confirmed) {
        if was_open {
            debug!(
                partition = p,
                applied, "gap closed: the leader holds nothing after it"
            );
        }
        partition.lag.store(0, Ordering::Relaxed);
        *gap = false;
    }
    Ok(())
}

/// Moves `readable` up to `applied` unless a gap is open.
fn settle(partition: &Partition, gap: bool) {
    if gap {
        return;
    }
    let applied = partition.applied();
    partition.readable.send_if_modified(|r| {
        let moved = applied > *r;
        *r = (*r).max(applied);
        moved
    });
}

/// The entry `seq` holds, or `None` for a check marker (no change) or one that does not decode
/// (nothing ringstore writes), which is stepped over rather than stalling every later entry.
fn decode(p: protocol::PartitionId, seq: u64, payload: &[u8]) -> Option<LogEntry> {
    if protocol::subjects::is_check_marker(payload) {
        return None;
    }
    serde_json::from_slice(payload)
        .inspect_err(|e| warn!(partition = p, seq, error = %e, "undecodable log entry; skipped"))
        .ok()
}

/// Applies `batch` (ascending sequences; whether the copy holds each entry's record as of its
/// `seq_before`) in one write and publishes the new applied sequence.
fn apply(
    partition: &Partition,
    batch: &[(u64, Option<LogEntry>, bool)],
) -> Result<(), StorageError> {
    let entries = batch.iter().map(|(seq, entry, prior_held)| Step {
        seq: *seq,
        entry: entry.as_ref(),
        prior_held: *prior_held,
    });
    if let Some(applied) = partition.storage.apply_all(partition.id, entries)? {
        partition.applied.send_replace(applied);
    }
    Ok(())
}
