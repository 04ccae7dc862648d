//! The real [`Store`]: NATS request/reply to the dbnode that holds the record's partition,
//! with failover to the other copy and read-your-writes (docs/design.md "Read path", "Write path" step 5).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::{
    subjects, timing, Answer, CountRequest, GetRequest, Op, PartitionId, PartitionMap,
    ProtocolError, Reply, Response, Role, ScanRequest, VersionedUser, WriteKind, WriteRequest,
};

use crate::config::ReadFrom;
use crate::disconnects::Disconnects;
use crate::list::{merge, Page, PartitionPage};
use crate::metrics::Metrics;
use crate::presence::PresenceTable;
use crate::store::{Store, StoreResult, TransportError};

/// The newest log state of a partition that an answer to this gateway was based on, ordered
/// by log epoch (a recreated log starts a new one), then sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Floor {
    epoch: u64,
    seq: u64,
}

/// Routes requests to dbnodes over NATS.
pub struct NatsStore {
    client: Client,
    /// Reads of the logs' state, to hold floors to what the log has.
    js: async_nats::jetstream::Context,
    map: Arc<PartitionMap>,
    timeout: Duration,
    read_from: ReadFrom,
    presence: Arc<PresenceTable>,
    /// Per partition, the highest log sequence any answer this gateway received was based on
    /// (write acknowledgements, verified refusals, reads): no later read through this gateway
    /// is served by a copy behind it.
    floors: Vec<Mutex<Floor>>,
    metrics: Arc<Metrics>,
    disconnects: Disconnects,
}

impl NatsStore {
    /// A store over `client` for the partitions of `map`.
    pub fn new(
        client: Client,
        map: Arc<PartitionMap>,
        timeout: Duration,
        read_from: ReadFrom,
        presence: Arc<PresenceTable>,
        metrics: Arc<Metrics>,
        disconnects: Disconnects,
    ) -> Self {
        let floors = map.all().map(|_| Mutex::default()).collect();
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        Self {
            js,
            client,
            map,
            timeout,
            read_from,
            presence,
            floors,
            metrics,
            disconnects,
        }
    }

    /// The copies of `p` to try, in order: by `READ_FROM` for reads, primary first for
    /// writes, and copies whose node is silent in presence last.
    fn targets(&self, p: PartitionId, op: Op) -> Vec<Role> {
        let mut roles = match (op, self.read_from) {
            (Op::Get | Op::Scan | Op::Count, ReadFrom::Replica) => {
                vec![Role::Replica, Role::Primary]
            }
            _ => vec![Role::Primary, Role::Replica],
        };
        roles.retain(|&role| role == Role::Primary || self.map.replica(p).is_some());
        let node = |role| match role {
            Role::Primary => Some(self.map.primary(p)),
            Role::Replica => self.map.replica(p),
        };
        roles.sort_by_key(|&role| !node(role).is_some_and(|n| self.presence.is_live(n)));
        roles
    }

    /// The read-your-writes floor of partition `p`.
    fn floor(&self, p: PartitionId) -> Floor {
        *self.floors[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Holds partition `p`'s floor to what the log itself has (its epoch and last sequence,
    /// asked of the log's leader): a floor beyond it came from an answer no log could give (a
    /// lying or broken copy) and would leave every read of `p` answered "behind". True if the
    /// floor was lowered (the impossible answer is counted).
    async fn hold_floor_to_the_log(&self, p: PartitionId) -> bool {
        let stream = match self.js.get_stream(subjects::stream_name(p)).await {
            Ok(stream) => stream,
            Err(_) => return false,
        };
        let info = stream.cached_info();
        let log = Floor {
            epoch: info.created.unix_timestamp_nanos().max(0) as u64,
            seq: info.state.last_sequence,
        };
        let mut floor = self.floors[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let possible =
            floor.epoch < log.epoch || (floor.epoch == log.epoch && floor.seq <= log.seq);
        if possible {
            return false;
        }
        *floor = log;
        drop(floor);
        self.metrics.impossible_answer(p);
        tracing::warn!(
            partition = p,
            "a copy claimed a log position beyond the log; ignored"
        );
        true
    }

    /// Raises the floor of `p` to what `answer` (based on log `epoch` up to `seen`) showed.
    fn saw(&self, p: PartitionId, epoch: u64, seen: u64, answer: &Answer) {
        let version = match answer {
            Ok(reply) => reply.version().unwrap_or(0),
            Err(ProtocolError::PreconditionFailed { current }) => *current,
            Err(_) => 0,
        };
        let seen = Floor {
            epoch,
            seq: seen.max(version),
        };
        let mut floor = self.floors[p as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *floor = (*floor).max(seen);
    }

    /// Sends one request per partition, concurrently, each built by `request(floor,
    /// deadline)`; fails if any partition cannot be reached.
    async fn scatter(
        &self,
        op: Op,
        request: impl Fn(Floor, u64) -> Vec<u8>,
    ) -> Result<Vec<Answer>, TransportError> {
        let request = &request;
        let calls = self.map.all().map(|p| {
            self.call(p, op, move |deadline| {
                request(self.floor(p), deadline).into()
            })
        });
        futures::future::join_all(calls).await.into_iter().collect()
    }

    /// Sends the request `payload(deadline)` to the copies of `p` in turn until one answers,
    /// within the request timeout; each attempt carries the deadline after which this gateway
    /// stops waiting for it, so that a copy reading it later (after a pause) drops it. "Behind"
    /// and "unavailable" answers also move on to the next copy.
    async fn call(
        &self,
        p: PartitionId,
        op: Op,
        mut payload: impl FnMut(u64) -> Bytes,
    ) -> Result<Answer, TransportError> {
        let deadline = Instant::now() + self.timeout;
        let answer = self.call_until(p, op, &mut payload, deadline).await?;
        // Every copy behind the floor: either the log moved on faster than they apply, or the
        // floor itself is impossible. In the second case it is held to the log, and asked once
        // more within the same budget.
        if matches!(answer, Err(ProtocolError::Behind { .. }))
            && self.hold_floor_to_the_log(p).await
        {
            return self.call_until(p, op, &mut payload, deadline).await;
        }
        Ok(answer)
    }

    /// [`NatsStore::call`]'s attempts, until `deadline`.
    async fn call_until(
        &self,
        p: PartitionId,
        op: Op,
        payload: &mut impl FnMut(u64) -> Bytes,
        deadline: Instant,
    ) -> Result<Answer, TransportError> {
        let targets = self.targets(p, op);
        let mut failure = TransportError::NoResponders;
        let mut resent = false;
        let mut i = 0;
        while i < targets.len() {
            let role = targets[i];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let last = i + 1 == targets.len();
            let share = remaining / (targets.len() - i) as u32;
            let started = Instant::now();
            // One timer for the whole call, queueing included: with NATS unreachable, a request
            // waits in the client's queue before a timeout of the client's own would start.
            let request = async_nats::Request::new()
                .payload(payload(timing::deadline_in(share)))
                .timeout(None);
            let call = tokio::time::timeout(
                share,
                self.client
                    .send_request(subjects::request(p, role, op), request),
            );
            let answered = if resent {
                Some(call.await)
            } else {
                self.disconnects.unless_lost(call).await
            };
            let Some(answered) = answered else {
                // The request or its reply went down with the connection: send it again, to
                // the same copy, at once (once per call; request ids make a write's second
                // copy harmless).
                resent = true;
                self.metrics
                    .observe_nats(op.as_str(), role.as_str(), "lost", started);
                continue;
            };
            let outcome = answered.unwrap_or_else(|_| Err(RequestErrorKind::TimedOut.into()));
            i += 1;
            let observe = |outcome| {
                self.metrics
                    .observe_nats(op.as_str(), role.as_str(), outcome, started)
            };
            match outcome {
                Ok(message) => match serde_json::from_slice::<Response>(&message.payload) {
                    Ok(Response {
                        answer: Err(ProtocolError::Behind { .. } | ProtocolError::Unavailable(_)),
                        ..
                    }) if !last => {
                        observe("retry");
                    }
                    Ok(Response {
                        answer,
                        seen,
                        epoch,
                    }) => {
                        self.saw(p, epoch, seen, &answer);
                        observe(if answer.is_ok() { "ok" } else { "refused" });
                        return Ok(answer);
                    }
                    Err(e) => {
                        observe("garbled");
                        return Ok(Err(ProtocolError::Internal(format!("bad reply: {e}"))));
                    }
                },
                Err(e) => {
                    failure = match e.kind() {
                        RequestErrorKind::NoResponders => {
                            observe("no_responders");
                            // A timeout elsewhere is the more telling failure.
                            if failure == TransportError::TimedOut {
                                failure
                            } else {
                                TransportError::NoResponders
                            }
                        }
                        RequestErrorKind::TimedOut => {
                            observe("timeout");
                            TransportError::TimedOut
                        }
                        _ => {
                            observe("error");
                            TransportError::Other(e.to_string())
                        }
                    };
                }
            }
        }
        Err(failure)
    }
}

fn unexpected(reply: Reply) -> ProtocolError {
    ProtocolError::Internal(format!("unexpected reply {reply:?}"))
}

impl Store for NatsStore {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<VersionedUser>> {
        Box::pin(async move {
            let p = self.map.partition_of(id);
            let payload = |deadline| {
                let floor = self.floor(p);
                let request = GetRequest {
                    id: id.to_owned(),
                    min_seq: floor.seq,
                    epoch: floor.epoch,
                    deadline,
                };
                serde_json::to_vec(&request)
                    .expect("requests serialise")
                    .into()
            };
            Ok(self
                .call(p, Op::Get, payload)
                .await?
                .and_then(|reply| match reply {
                    Reply::User(record) => Ok(record),
                    other => Err(unexpected(other)),
                }))
        })
    }

    fn write(&self, request_id: String, kind: WriteKind) -> BoxFuture<'_, StoreResult<Reply>> {
        Box::pin(async move {
            let p = self.map.partition_of(kind.id());
            let op = kind.op();
            let mut request = WriteRequest {
                request_id,
                deadline: 0,
                kind,
            };
            let payload = |deadline| {
                request.deadline = deadline;
                serde_json::to_vec(&request)
                    .expect("requests serialise")
                    .into()
            };
            self.call(p, op, payload).await
        })
    }

    fn scan(
        &self,
        after: Option<String>,
        limit: u32,
        group: Option<u32>,
    ) -> BoxFuture<'_, StoreResult<Page>> {
        Box::pin(async move {
            let answers = self
                .scatter(Op::Scan, |floor, deadline| {
                    let request = ScanRequest {
                        after: after.clone(),
                        limit,
                        group,
                        min_seq: floor.seq,
                        epoch: floor.epoch,
                        deadline,
                    };
                    serde_json::to_vec(&request).expect("requests serialise")
                })
                .await?;
            let mut pages = Vec::with_capacity(answers.len());
            for answer in answers {
                match answer {
                    Ok(Reply::Page { items, more }) => pages.push(PartitionPage { items, more }),
                    Ok(other) => return Ok(Err(unexpected(other))),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(merge(pages, limit as usize)))
        })
    }

    fn count(&self, group: Option<u32>) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let answers = self
                .scatter(Op::Count, |floor, deadline| {
                    let request = CountRequest {
                        group,
                        min_seq: floor.seq,
                        epoch: floor.epoch,
                        deadline,
                    };
                    serde_json::to_vec(&request).expect("requests serialise")
                })
                .await?;
            let mut total = 0;
            for answer in answers {
                match answer {
                    Ok(Reply::Count { count }) => total += count,
                    Ok(other) => return Ok(Err(unexpected(other))),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(total))
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return false;
            }
            let probe = |deadline| {
                let request = GetRequest {
                    id: String::new(),
                    min_seq: 0,
                    epoch: 0,
                    deadline,
                };
                serde_json::to_vec(&request)
                    .expect("requests serialise")
                    .into()
            };
            for p in self.map.all() {
                if self.call(p, Op::Get, probe).await.is_err() {
                    return false;
                }
            }
            true
        })
    }
}
