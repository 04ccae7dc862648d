//! The real [`Store`]: NATS request/reply to the dbnode that holds the record's partition,
//! with failover to the other copy and read-your-writes (DESIGN.md "Read path", step 4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use protocol::{
    subjects, Answer, GetRequest, Op, PartitionId, PartitionMap, ProtocolError, Reply, Role,
    VersionedUser, WriteKind, WriteRequest,
};

use crate::config::ReadFrom;
use crate::metrics::Metrics;
use crate::presence::PresenceTable;
use crate::store::{Store, StoreResult, TransportError};

/// Routes requests to dbnodes over NATS.
pub struct NatsStore {
    client: Client,
    map: PartitionMap,
    timeout: Duration,
    read_from: ReadFrom,
    presence: Arc<PresenceTable>,
    /// Per partition, the highest sequence this gateway has acknowledged to a client.
    acked: Vec<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl NatsStore {
    /// A store over `client` for a ring of `map.partitions` partitions.
    pub fn new(
        client: Client,
        map: PartitionMap,
        timeout: Duration,
        read_from: ReadFrom,
        presence: Arc<PresenceTable>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let acked = map.all().map(|_| AtomicU64::new(0)).collect();
        Self {
            client,
            map,
            timeout,
            read_from,
            presence,
            acked,
            metrics,
        }
    }

    /// The copies of `p` to try, in order: by `READ_FROM` for reads, primary first for
    /// writes, and copies whose node is silent in presence last.
    fn targets(&self, p: PartitionId, op: Op) -> Vec<Role> {
        let mut roles = match (op, self.read_from) {
            (Op::Get, ReadFrom::Replica) => vec![Role::Replica, Role::Primary],
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

    /// Sends `payload` to the copies of `p` in turn until one answers, within the request
    /// timeout. "Behind" and "unavailable" answers also move on to the next copy.
    async fn call(&self, p: PartitionId, op: Op, payload: Bytes) -> Result<Answer, TransportError> {
        let deadline = Instant::now() + self.timeout;
        let targets = self.targets(p, op);
        let mut failure = TransportError::NoResponders;
        for (i, &role) in targets.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let last = i + 1 == targets.len();
            let share = remaining / (targets.len() - i) as u32;
            let started = Instant::now();
            let request = async_nats::Request::new()
                .payload(payload.clone())
                .timeout(Some(share));
            let outcome = self
                .client
                .send_request(subjects::request(p, role, op), request)
                .await;
            let observe = |outcome| {
                self.metrics
                    .observe_nats(op.as_str(), role.as_str(), outcome, started)
            };
            match outcome {
                Ok(message) => match serde_json::from_slice::<Answer>(&message.payload) {
                    Ok(Err(ProtocolError::Behind { .. } | ProtocolError::Unavailable(_)))
                        if !last =>
                    {
                        observe("retry");
                    }
                    Ok(answer) => {
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

fn op_of(kind: &WriteKind) -> Op {
    match kind {
        WriteKind::Create { .. } => Op::Create,
        WriteKind::Update { .. } => Op::Update,
        WriteKind::Delete { .. } => Op::Delete,
    }
}

impl Store for NatsStore {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<VersionedUser>> {
        Box::pin(async move {
            let p = self.map.partition_of(id);
            let min_seq = self.acked[p as usize].load(Ordering::Acquire);
            let request = GetRequest {
                id: id.to_owned(),
                min_seq,
            };
            let payload = serde_json::to_vec(&request)
                .expect("requests serialise")
                .into();
            Ok(self
                .call(p, Op::Get, payload)
                .await?
                .and_then(|reply| match reply {
                    Reply::User(record) => Ok(record),
                    Reply::Deleted { .. } => Err(ProtocolError::NotFound),
                }))
        })
    }

    fn write(&self, request_id: String, kind: WriteKind) -> BoxFuture<'_, StoreResult<Reply>> {
        Box::pin(async move {
            let p = self.map.partition_of(kind.id());
            let op = op_of(&kind);
            let request = WriteRequest { request_id, kind };
            let payload = serde_json::to_vec(&request)
                .expect("requests serialise")
                .into();
            let answer = self.call(p, op, payload).await?;
            if let Ok(reply) = &answer {
                self.acked[p as usize].fetch_max(reply.version(), Ordering::AcqRel);
            }
            Ok(answer)
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return false;
            }
            let probe = serde_json::to_vec(&GetRequest {
                id: String::new(),
                min_seq: 0,
            })
            .expect("requests serialise");
            for p in self.map.all() {
                if self.call(p, Op::Get, probe.clone().into()).await.is_err() {
                    return false;
                }
            }
            true
        })
    }
}
