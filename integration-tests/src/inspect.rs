//! Looking behind the gateway: one copy of a partition asked directly over NATS
//! ([`CopyReader`]), a partition's replication log (JetStream), and a node's catch-up as its
//! presence reports it.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use protocol::{
    subjects, Answer, CountRequest, GetRequest, LogEntry, NodeId, NodeState, Op, PartitionId,
    Presence, Response, Role,
};
use tokio::time::Instant;

use crate::Cluster;

/// How long one direct request to a copy may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a [`CopyReader`] keeps asking while nothing answers (a node still registering its
/// endpoints after a restart) before it panics.
const ASK_DEADLINE: Duration = Duration::from_secs(10);

/// One copy of one partition, `ringstore.part.{p}.{role}.*`, asked directly over NATS: what
/// that dbnode holds, without the gateway's failover or read-your-writes.
#[derive(Debug, Clone)]
pub struct CopyReader {
    client: async_nats::Client,
    partition: PartitionId,
    role: Role,
}

impl CopyReader {
    /// The subject of `op` on this copy.
    pub fn subject(&self, op: Op) -> String {
        subjects::request(self.partition, self.role, op)
    }

    /// The copy's answer to a get of `id` (`min_seq` 0: whatever it has applied).
    pub async fn get(&self, id: &str) -> Answer {
        let request = GetRequest {
            id: id.to_owned(),
            min_seq: 0,
            epoch: 0,
            deadline: 0,
        };
        self.ask(
            Op::Get,
            serde_json::to_vec(&request).expect("requests serialise"),
        )
        .await
    }

    /// The copy's count of records, in total or in one group.
    pub async fn count(&self, group: Option<u32>) -> Answer {
        let request = CountRequest {
            group,
            min_seq: 0,
            epoch: 0,
            deadline: 0,
        };
        self.ask(
            Op::Count,
            serde_json::to_vec(&request).expect("requests serialise"),
        )
        .await
    }

    /// Sends one request, retrying for up to 10 s while nothing answers; panics after that or
    /// on a reply that is not an [`Answer`].
    async fn ask(&self, op: Op, payload: Vec<u8>) -> Answer {
        let subject = self.subject(op);
        let deadline = Instant::now() + ASK_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            let call = self.client.request(subject.clone(), payload.clone().into());
            match tokio::time::timeout(ASK_TIMEOUT, call).await {
                Ok(Ok(msg)) => {
                    let response: Response =
                        serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                            panic!(
                                "{subject}: not an answer ({e}): {}",
                                String::from_utf8_lossy(&msg.payload)
                            )
                        });
                    return response.answer;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{subject}: no answer within {ASK_DEADLINE:?}; last: {last}");
    }
}

impl Cluster {
    /// A reader of the copy of partition `p` that has `role` (on its own NATS connection).
    pub async fn copy(&self, p: PartitionId, role: Role) -> CopyReader {
        CopyReader {
            client: self.nats_client().await,
            partition: p,
            role,
        }
    }

    /// The sequence of the newest entry in partition `p`'s log (0 when empty).
    pub async fn log_end(&self, p: PartitionId) -> u64 {
        let js = jetstream::new(self.nats_client().await);
        let stream = js
            .get_stream(subjects::stream_name(p))
            .await
            .unwrap_or_else(|e| panic!("stream of partition {p}: {e}"));
        let info = stream
            .get_info()
            .await
            .unwrap_or_else(|e| panic!("stream info of partition {p}: {e}"));
        info.state.last_sequence
    }

    /// The entry the log of partition `p` keeps for record `id` (its latest write), with its
    /// sequence; `None` if the log never saw the id.
    pub async fn log_entry(&self, p: PartitionId, id: &str) -> Option<(u64, LogEntry)> {
        let js = jetstream::new(self.nats_client().await);
        let stream = js
            .get_stream(subjects::stream_name(p))
            .await
            .unwrap_or_else(|e| panic!("stream of partition {p}: {e}"));
        let message = stream
            .get_last_raw_message_by_subject(&subjects::log_subject(p, id))
            .await
            .ok()?;
        let entry = serde_json::from_slice(&message.payload)
            .unwrap_or_else(|e| panic!("log entry of {id:?} in partition {p}: {e}"));
        Some((message.sequence, entry))
    }

    /// Waits until `db-{index}` announces `ready` with every hosted partition at lag 0 and
    /// applied equal to that partition's log end, and returns that heartbeat. Panics after
    /// `deadline`. Only meaningful while nothing writes (the log end moves otherwise).
    pub async fn wait_caught_up(&self, index: u32, deadline: Duration) -> Presence {
        let end = Instant::now() + deadline;
        let client = self.nats_client().await;
        let mut heartbeats = client
            .subscribe(subjects::presence(NodeId(index)))
            .await
            .expect("subscribe to presence");
        let mut last = None;
        loop {
            let Ok(Some(msg)) = tokio::time::timeout_at(end, heartbeats.next()).await else {
                panic!("db-{index} did not catch up within {deadline:?}; last heartbeat: {last:?}");
            };
            let Ok(presence) = serde_json::from_slice::<Presence>(&msg.payload) else {
                continue;
            };
            let mut caught_up = presence.state == NodeState::Ready;
            for partition in &presence.partitions {
                caught_up &= partition.lag == 0
                    && partition.applied == self.log_end(partition.partition).await;
            }
            if caught_up {
                return presence;
            }
            last = Some(presence);
        }
    }
}
