//! The tailer (DESIGN.md "Write path", steps 3, 5 and 6): the only code that applies log
//! entries to the local copy, in log order, each delivered burst in one `WriteBatch` with its
//! last sequence.
//!
//! - **Gaps.** The log keeps one entry per record, so an entry superseded before the tailer
//!   read it is gone: the consumer jumps over it. The entry that superseded it was appended
//!   before the jump, so once the consumer has nothing left to deliver (`pending` 0) the copy
//!   has applied it; until then the copy may lack an acknowledged write, and `readable` (what
//!   reads wait for) stays where it was.
//! - **Identity.** The copy records the identity of the log it applies (the stream's creation
//!   time). A log that is not the one it knew — recreated, or shorter than what the copy has
//!   applied (a NATS host that lost its unsynced tail) — makes the copy start over from the
//!   log, instead of wedging on sequences that never come or dropping new entries as applied.
//! - **A silent consumer.** JetStream's ordered consumer of an R3 log lives on the log's
//!   leader; when that server dies, the client notices only after missing its heartbeats for
//!   5 s and more, and until then the copy answers reads of new writes `behind`. The identity
//!   check also reads the log's end: a log that holds entries past the copy while the consumer
//!   has delivered nothing for [`STALL`] makes the tailer start a new consumer at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use protocol::LogEntry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Partition;
use crate::log::LogState;
use crate::storage::{Step, StorageError};

/// How often a tailer checks that the log is still the one it applies, and that its consumer
/// is not silent while the log has moved on.
const IDENTITY_CHECK: Duration = Duration::from_millis(500);
/// How many identity checks may wait for an answer at once: one sent while the log's leader is
/// being re-elected can wait the whole log timeout, and the one sent just after the election
/// must not wait behind it.
const CHECKS_IN_FLIGHT: usize = 3;
/// How long a consumer may deliver nothing while the log holds entries past the copy before
/// the tailer replaces it.
const STALL: Duration = Duration::from_secs(1);
/// The most log entries applied in one RocksDB write.
const BATCH: usize = 256;
/// How long a tailer waits before trying again when the log cannot be read.
const RETRY: Duration = Duration::from_secs(1);
/// The first wait before creating a consumer again on a log that could be read (a new leader
/// not ready for consumers yet), doubled on each failure in a row up to [`RETRY`].
const RETRY_CONSUMER: Duration = Duration::from_millis(100);

/// Applies the log to `partition`'s copy until `shutdown`.
pub(super) async fn run(partition: Arc<Partition>, shutdown: CancellationToken) {
    let mut consumer_pause = RETRY_CONSUMER;
    while !shutdown.is_cancelled() {
        let pause = match check_identity(&partition).await {
            None => RETRY,
            Some((state, _)) => match tail(&partition, state, &shutdown).await {
                Ok(()) | Err(Retail::AtOnce) => {
                    consumer_pause = RETRY_CONSUMER;
                    continue;
                }
                Err(Retail::AfterPause) => RETRY,
                Err(Retail::NoConsumer) => {
                    let pause = consumer_pause;
                    consumer_pause = (consumer_pause * 2).min(RETRY);
                    pause
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
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

/// How the tailer starts again after a tail session ended early.
enum Retail {
    /// After [`RETRY`]: the log could not be read or changed.
    AfterPause,
    /// At once: the consumer fell silent while the log moved on.
    AtOnce,
    /// Soon: the log could be read but no consumer created on it.
    NoConsumer,
}

/// One consumer session, from the applied sequence on, until an error, a changed log or
/// `shutdown`.
async fn tail(
    partition: &Partition,
    state: LogState,
    shutdown: &CancellationToken,
) -> Result<(), Retail> {
    let p = partition.id;
    let from = partition.applied() + 1;
    let mut entries = match partition.log.tail(from).await {
        Ok(entries) => entries.ready_chunks(BATCH),
        Err(e) => {
            warn!(partition = p, error = %e, "cannot tail the log; retrying");
            return Err(Retail::NoConsumer);
        }
    };
    debug!(partition = p, from, "tailing the log");
    // The copy equals a prefix of the log if it did when the last session ended, or if it has
    // applied up to the log's end (every record's latest entry is at or below it).
    let applied = partition.applied();
    let mut gap = partition.readable() < applied && applied < state.last;
    settle(partition, gap);
    let mut check = tokio::time::interval(IDENTITY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    // Identity checks run beside the tailing, never in its way, and beside one another: on a
    // NATS cluster whose stream or meta leader is being re-elected, reading the log's state can
    // take the whole log timeout while entries keep arriving, and a check sent once the new
    // leader is there answers at once.
    let mut checking = FuturesUnordered::new();
    let mut delivered = tokio::time::Instant::now();
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick(), if checking.len() < CHECKS_IN_FLIGHT => {
                checking.push(check_identity(partition));
                continue;
            }
            Some(checked) = checking.next(), if !checking.is_empty() => {
                match checked {
                    Some((now, false)) if now.epoch == state.epoch => {
                        let applied = partition.applied();
                        if now.last <= applied || delivered.elapsed() < STALL {
                            continue;
                        }
                        info!(
                            partition = p,
                            applied,
                            log_end = now.last,
                            "the log consumer is silent while the log moves on; re-tailing"
                        );
                        return Err(Retail::AtOnce);
                    }
                    Some(_) => {
                        info!(partition = p, "re-tailing a changed log");
                        return Err(Retail::AfterPause);
                    }
                    None => continue,
                }
            }
            item = entries.next() => item,
        };
        let Some(messages) = item else {
            return Err(Retail::AfterPause);
        };
        delivered = tokio::time::Instant::now();
        // Every entry already delivered is applied in one batch: under load a consumer hands
        // over several at once, and one RocksDB write for all of them costs little more than
        // one for each.
        let mut applied = partition.applied();
        let mut batch = Vec::with_capacity(messages.len());
        for message in &messages {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    debug!(partition = p, error = %e, "log consumer hiccup");
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            partition.lag.store(pending, Ordering::Relaxed);
            if seq > applied {
                if seq > applied + 1 && !gap {
                    debug!(
                        partition = p,
                        applied, seq, "gap in the log; reads wait until its end"
                    );
                    gap = true;
                }
                let entry = decode(p, seq, &message.payload);
                // Without a gap the copy is the log's prefix up to `applied`; an entry whose
                // record's previous entry is within it finds the record as that entry left it
                // (it was appended on the condition that this was still the latest).
                let prior_held = !gap
                    && entry
                        .as_ref()
                        .and_then(|e| e.seq_before)
                        .is_some_and(|before| before <= applied);
                batch.push((seq, entry, prior_held));
                applied = seq;
            }
            // Nothing left to deliver: every entry that superseded a skipped one (appended
            // before the skip) has been delivered and is in this batch or applied.
            if pending == 0 {
                gap = false;
            }
        }
        if let Err(e) = apply(partition, &batch) {
            warn!(partition = p, error = %e, "apply failed; re-tailing");
            return Err(Retail::AfterPause);
        }
        settle(partition, gap);
    }
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
