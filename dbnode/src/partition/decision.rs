//! How one write is decided (docs/design.md "Write path"), free of the writer
//! task's bookkeeping: decide on the record's latest known state, append conditional on that
//! state being the record's latest log entry, and on a conflict read the latest entry from the
//! log and decide again — until the write commits, is refused on a state the log confirms
//! (a check marker appended on the condition that the state is still the record's latest), or
//! its deadline passes. A request the log already holds is answered, never applied again.

use protocol::decide::decide;
use protocol::{
    timing, Answer, LogEntry, NodeId, PartitionId, ProtocolError, Reply, Response, User,
    VersionedUser, WriteKind, WriteRequest,
};
use tracing::debug;

use crate::log::{AppendError, Appended, Log};
use crate::storage::Storage;

/// How often one write may find its record moved on and decide again before giving up.
const MAX_DECISIONS: usize = 16;

/// A record's latest state as a writer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Known {
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
    pub(super) fn outcome(&self) -> Reply {
        Reply::written(self.record.clone(), self.seq)
    }
}

/// What a finished write taught the writer about its record.
pub(super) enum Learned {
    /// Nothing new.
    Nothing,
    /// The record's latest log entry, as of the write.
    Latest(Known),
    /// This write committed `entry` at the known state's sequence: the latest entry, and one the
    /// local copy can apply without reading it back from the log.
    Committed(Known, LogEntry),
    /// The write's fate in the log is unknown (the log did not answer): forget what we knew.
    Unknown,
}

pub(super) fn unavailable(why: impl Into<String>) -> Response {
    Response::new(Err(ProtocolError::Unavailable(why.into())), 0)
}

/// Decides `request` on `base`, appends it conditional on `base` being the record's latest
/// entry, and on a conflict decides again on the latest entry read from the log, until the
/// write commits, is refused on a verified state, or its deadline passes.
pub(super) async fn resolve<L: Log + ?Sized>(
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
            group_before: base.versioned().map(|v| v.user.group),
            seq_before: Some(base.seq),
        };
        match decide(base.versioned().as_ref(), kind) {
            Ok(record) => {
                entry.record = record;
                match log.append(&entry, base.seq).await {
                    Ok(Appended::Stored(seq)) => {
                        let known = Known::from_entry(seq, entry.clone());
                        return (
                            Response::new(Ok(known.outcome()), seq),
                            Learned::Committed(known, entry),
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
                // The read may have come from a log leader that was replaced and does not know
                // it yet (paused, say): confirm the state by the log's consensus, as a commit is.
                match log.verify(id, base.seq).await {
                    Ok(true) => {}
                    Ok(false) => {
                        debug!(
                            partition,
                            id,
                            read = base.seq,
                            "a stale read; deciding again"
                        );
                        match latest(log, id).await {
                            Ok(known) => base = known,
                            Err(e) => return (unavailable(e.0), Learned::Unknown),
                        }
                        continue;
                    }
                    Err(e) => return (unavailable(e.0), Learned::Unknown),
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
        WriteKind::Create { user } => Ok(Reply::written(Some(user.clone()), seq)),
        WriteKind::Delete { .. } => Ok(Reply::written(None, seq)),
        WriteKind::Update { .. } => Err(ProtocolError::Unavailable(format!(
            "this request was applied at {seq} and has been superseded since; its result is \
             no longer known"
        ))),
    }
}
