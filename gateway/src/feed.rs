//! `GET /api/users/changes`: every committed change, as Server-Sent Events, read from the
//! partition logs (docs/design.md "Change feed").
//!
//! Each partition's log is read by direct gets (never a consumer: docs/security.md), from the
//! sequence after the feed's position on; the partitions' changes are merged as they come
//! (ordered within a partition, interleaved across). Every event's `id` is the feed's
//! [`Position`] after it (per partition, the last sequence passed), so a client that
//! reconnects with `Last-Event-ID` continues exactly after the last event it received. The
//! logs keep the latest entry per record: a feed that starts from further back receives each
//! record's latest state, never a stale one after a newer.
//!
//! Bounded: a partition is read at most [`BATCH`] entries ahead, the events wait in a channel of
//! [`QUEUE`], and a client that reads nothing for `CHANGE_FEED_STALL_MS` is ended (its last
//! event's `id` is where it resumes). At most `MAX_CHANGE_FEEDS` feeds are open at once. A
//! feed the gateway ended has `WRITE_TIMEOUT_MS` to hand its last events and its `end` to the
//! connection; if it has not by then (the client still reads nothing; over HTTP/2 its stream
//! can be stalled by flow control while the socket is not), its connection is closed, so that
//! an ended feed holds neither the connection nor its queued events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, SelectAll};
use futures::{Stream, StreamExt};
use protocol::partition::fnv1a64;
use protocol::{subjects, LogEntry, PartitionId, Position, Since, User};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::{debug, warn};

use crate::connection::ConnectionHandle;
use crate::error::ApiError;
use crate::logs::{LogState, Logs};
use crate::metrics::Metrics;

/// Entries read from a partition's log ahead of the client.
pub const BATCH: usize = 64;
/// Events queued for the client.
pub const QUEUE: usize = 64;
/// How long an `EventSource` waits before reconnecting (the `retry` field).
const RECONNECT: Duration = Duration::from_secs(1);

/// One change: the `data` of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// `upsert` (created or updated) or `delete`.
    pub op: ChangeOp,
    /// The record's id.
    #[schema(value_type = String)]
    pub id: String,
    /// The record's version after the change (its `ETag`).
    pub version: u64,
    /// The record after the change; absent on a delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Created or updated.
    Upsert,
    /// Deleted.
    Delete,
}

/// Why a feed ended: the `data` of its last event (`event: end`). Reconnect with the
/// `Last-Event-ID` of the last event (an `EventSource` does so by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The client did not read for `CHANGE_FEED_STALL_MS`.
    SlowClient,
    /// The gateway is shutting down.
    Shutdown,
    /// A partition log could not be read.
    LogUnavailable,
}

impl EndReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::SlowClient => "slow-client",
            EndReason::Shutdown => "shutdown",
            EndReason::LogUnavailable => "log-unavailable",
        }
    }
}

#[derive(Serialize)]
struct End {
    reason: EndReason,
}

/// A fingerprint of the logs' identities: another when any log was recreated.
fn fingerprint(states: &[LogState]) -> u32 {
    let epochs: Vec<u8> = states.iter().flat_map(|s| s.epoch.to_be_bytes()).collect();
    let hash = fnv1a64(&epochs);
    (hash ^ (hash >> 32)) as u32
}

/// Where a feed asked to start `since` begins, given the logs' ends `here`: a position in
/// today's logs is kept; one in logs that were recreated (or beyond their end) starts over
/// from each record's latest entry, partition by partition.
fn start(since: Since, here: &Position) -> Position {
    let mut from = Position {
        logs: here.logs,
        seqs: vec![0; here.seqs.len()],
    };
    match since {
        Since::Beginning => {}
        Since::Now => from.seqs.clone_from(&here.seqs),
        Since::After(at) => {
            if at.logs == here.logs && at.seqs.len() == here.seqs.len() {
                for ((from, at), last) in from.seqs.iter_mut().zip(at.seqs).zip(&here.seqs) {
                    if at <= *last {
                        *from = at;
                    }
                }
            }
        }
    }
    from
}

/// The change a log entry made, if it passes the `group` filter: an upsert in the group, a
/// change of a record that was in it, or a delete whose group is not known.
fn change(payload: &[u8], version: u64, group: Option<u32>) -> Option<Change> {
    if subjects::is_check_marker(payload) {
        return None;
    }
    let entry: LogEntry = match serde_json::from_slice(payload) {
        Ok(entry) => entry,
        Err(e) => {
            warn!(version, error = %e, "undecodable log entry; not in the feed");
            return None;
        }
    };
    let now = entry.record.as_ref().map(|user| user.group);
    let passes = match group {
        None => true,
        Some(g) => {
            now == Some(g)
                || entry.group_before == Some(g)
                || (now.is_none() && entry.group_before.is_none())
        }
    };
    passes.then_some(Change {
        op: match entry.record {
            Some(_) => ChangeOp::Upsert,
            None => ChangeOp::Delete,
        },
        id: entry.id,
        version,
        user: entry.record,
    })
}

type Entries = std::pin::Pin<Box<dyn Stream<Item = (PartitionId, Option<(u64, Vec<u8>)>)> + Send>>;

/// How often a feed reads a log it has heard nothing from (commit hints can be lost with a
/// reconnect): the longest a change can wait for its event.
const IDLE_READ: Duration = Duration::from_secs(1);

/// Partition `p`'s log after sequence `after`: (sequence, payload), or `None` once it fails.
/// Read by direct gets of at most [`BATCH`] entries ([`runtime::LogReader`]), the next only
/// once the client has taken the last; a fetch that finds nothing left waits for the log's
/// next commit hint, or [`IDLE_READ`].
async fn follow(logs: &Logs, p: PartitionId, after: u64) -> Result<Entries, ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::Protocol(protocol::ProtocolError::Unavailable(format!(
            "the log of partition {p} cannot be followed: {e}"
        )))
    };
    let reader = logs.reader(p).await.map_err(|e| unavailable(&e))?;
    let hints = logs.hints(p);
    struct Follow {
        reader: runtime::LogReader,
        hints: tokio::sync::watch::Receiver<u64>,
        next: u64,
        ready: std::collections::VecDeque<runtime::LogMessage>,
        drained: bool,
    }
    let state = Follow {
        reader,
        hints,
        next: after + 1,
        ready: Default::default(),
        drained: false,
    };
    let entries = stream::unfold(Some(state), move |state| async move {
        let mut state = state?;
        while state.ready.is_empty() {
            if state.drained {
                // Nothing was left: wait until the log may have moved.
                let _ = tokio::time::timeout(IDLE_READ, state.hints.changed()).await;
            }
            match state.reader.fetch(state.next, BATCH).await {
                Ok(batch) => {
                    state.drained = batch.pending == Some(0);
                    state.ready.extend(batch.messages);
                }
                Err(e) => {
                    warn!(partition = p, error = %e, "following the log failed");
                    return Some(((p, None), None));
                }
            }
        }
        let message = state.ready.pop_front()?;
        state.next = message.seq + 1;
        Some((
            (p, Some((message.seq, message.payload.to_vec()))),
            Some(state),
        ))
    });
    Ok(Box::pin(entries))
}

/// Opens a feed from `since`, with only changes of `group` if given, on `connection` (closed
/// if the feed ends and its last events are not taken in time; `None` outside a server).
pub async fn open(
    logs: Arc<Logs>,
    metrics: Arc<Metrics>,
    since: Since,
    group: Option<u32>,
    connection: Option<ConnectionHandle>,
) -> Result<Response, ApiError> {
    let permit = logs
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyFeeds(logs.limits.max_feeds))?;
    let states = logs.states().await?;
    let here = Position {
        logs: fingerprint(&states),
        seqs: states.iter().map(|s| s.last).collect(),
    };
    let from = start(since, &here);
    let mut sources = stream::select_all(Vec::new());
    for p in logs.map.all() {
        sources.push(follow(&logs, p, from.seqs[p as usize]).await?);
    }
    let (events, received) = mpsc::channel(QUEUE);
    let (end, ended) = oneshot::channel();
    // Held by the body: its receiver learns when the body is gone (delivered or dropped).
    let (body_alive, body_gone) = oneshot::channel::<()>();
    let first = Event::default().id(from.to_string()).retry(RECONNECT);
    let pump = Pump {
        logs: logs.clone(),
        metrics,
        group,
        at: from,
        events,
        permit,
    };
    tokio::spawn(pump.run(
        sources,
        end,
        Delivery {
            body_gone,
            connection,
        },
    ));
    let mut received = received;
    let body = stream::once(async { first })
        .chain(stream::poll_fn(move |cx| {
            let _alive = &body_alive;
            received.poll_recv(cx)
        }))
        .chain(stream::once(ended).filter_map(|end| async { end.ok() }))
        .map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new()
        .interval(logs.limits.keep_alive)
        .text("keep-alive");
    let mut response = Sse::new(body).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses (nginx) would hold events back.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// Moves changes from the logs to one client.
struct Pump {
    logs: Arc<Logs>,
    metrics: Arc<Metrics>,
    group: Option<u32>,
    /// The position after the last event queued for the client.
    at: Position,
    events: mpsc::Sender<Event>,
    /// Held while the feed is open.
    permit: OwnedSemaphorePermit,
}

/// How a feed's end reaches its client.
struct Delivery {
    /// Resolves when the response body is dropped: hyper has taken all of it, or the
    /// connection is gone.
    body_gone: oneshot::Receiver<()>,
    /// Closed if the body is not gone within `end_grace` of the end.
    connection: Option<ConnectionHandle>,
}

impl Pump {
    async fn run(
        mut self,
        mut sources: SelectAll<Entries>,
        end: oneshot::Sender<Event>,
        delivery: Delivery,
    ) {
        let open = self.metrics.feed_opened();
        let reason = loop {
            let next = tokio::select! {
                _ = self.logs.shutdown.cancelled() => break EndReason::Shutdown,
                _ = self.events.closed() => return debug!("change feed client went away"),
                next = sources.next() => next,
            };
            let Some((p, Some((seq, payload)))) = next else {
                break EndReason::LogUnavailable;
            };
            let before = std::mem::replace(&mut self.at.seqs[p as usize], seq);
            let Some(change) = change(&payload, seq, self.group) else {
                continue;
            };
            let data = serde_json::to_string(&change).expect("changes serialise");
            let event = Event::default().id(self.at.to_string()).data(data);
            let sent = tokio::select! {
                _ = self.logs.shutdown.cancelled() => Err(EndReason::Shutdown),
                sent = tokio::time::timeout(self.logs.limits.stall, self.events.send(event)) => {
                    match sent {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => return debug!("change feed client went away"),
                        Err(_) => Err(EndReason::SlowClient),
                    }
                }
            };
            if let Err(reason) = sent {
                // Not delivered: the client resumes before it.
                self.at.seqs[p as usize] = before;
                break reason;
            }
        };
        self.metrics.feed_ended(reason.as_str());
        debug!(reason = reason.as_str(), at = %self.at, "change feed ended");
        let data = serde_json::to_string(&End { reason }).expect("ends serialise");
        let _ = end.send(
            Event::default()
                .event("end")
                .id(self.at.to_string())
                .data(data),
        );
        // The feed is over: its slot is free, its queue closed (the body ends after what is
        // in it and the `end`); its connection has `end_grace` to take the rest.
        let Pump {
            logs,
            permit,
            events,
            ..
        } = self;
        drop((open, permit, events));
        let Some(connection) = delivery.connection else {
            return;
        };
        let grace = logs.limits.end_grace;
        if tokio::time::timeout(grace, delivery.body_gone)
            .await
            .is_err()
        {
            debug!(
                reason = reason.as_str(),
                "an ended change feed's client took nothing for {grace:?}: connection closed"
            );
            connection.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, group: Option<u32>, group_before: Option<u32>) -> Vec<u8> {
        let record = group.map(|group| User {
            id: id.into(),
            name: "Ann".into(),
            email: "ann@example.com".into(),
            group,
        });
        let entry = LogEntry {
            id: id.into(),
            record,
            writer: protocol::NodeId(0),
            request_id: "r".into(),
            group_before,
            seq_before: None,
        };
        serde_json::to_vec(&entry).unwrap()
    }

    #[test]
    fn a_group_filter_passes_what_touches_the_group() {
        let passes = |g, before| change(&entry("a", g, before), 7, Some(3)).is_some();
        assert!(passes(Some(3), None), "created in the group");
        assert!(passes(Some(3), Some(1)), "moved into it");
        assert!(passes(Some(4), Some(3)), "moved out of it");
        assert!(passes(None, Some(3)), "deleted from it");
        assert!(passes(None, None), "deleted, group unknown");
        assert!(!passes(Some(4), Some(1)), "elsewhere");
        assert!(!passes(Some(4), None), "created elsewhere");
        assert!(!passes(None, Some(4)), "deleted elsewhere");
        let all = change(&entry("a", None, Some(4)), 9, None).unwrap();
        assert_eq!((all.op, all.version, all.user), (ChangeOp::Delete, 9, None));
    }

    #[test]
    fn a_feed_starts_where_asked_in_todays_logs_only() {
        let here = Position {
            logs: 7,
            seqs: vec![10, 20, 30],
        };
        let at = |logs, seqs: &[u64]| {
            Since::After(Position {
                logs,
                seqs: seqs.to_vec(),
            })
        };
        assert_eq!(start(Since::Now, &here).seqs, [10, 20, 30]);
        assert_eq!(start(Since::Beginning, &here).seqs, [0, 0, 0]);
        assert_eq!(start(at(7, &[5, 20, 1]), &here).seqs, [5, 20, 1]);
        assert_eq!(start(at(7, &[5, 21, 1]), &here).seqs, [5, 0, 1]);
        assert_eq!(start(at(8, &[5, 20, 1]), &here).seqs, [0, 0, 0]);
        assert_eq!(start(at(7, &[5, 20]), &here).seqs, [0, 0, 0]);
        assert_eq!(start(Since::Now, &here).logs, 7);
    }
}
