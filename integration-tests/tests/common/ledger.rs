//! [`Ledger`]: what the gateway acknowledged, and the assertions that the gateway and each
//! copy of a partition (asked directly over NATS) hold exactly that.

use std::collections::BTreeMap;

use futures::StreamExt;
use integration_tests::{Cluster, HttpReply};
use protocol::{Op, PartitionId, ProtocolError, Reply, Role};
use reqwest::StatusCode;
use serde_json::Value;

use super::writes::Write;
use super::{partition, Api};

/// The state of a record as the gateway last acknowledged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    /// The record, `None` once deleted.
    pub user: Option<Value>,
    /// Its version (ETag); 0 after a delete.
    pub version: u64,
}

/// What the gateway acknowledged, per record id.
#[derive(Debug, Default)]
pub struct Ledger(pub BTreeMap<String, Acked>);

impl Ledger {
    /// Records the answer to a write of `id`: 200/201 the record and its ETag, 204 deleted.
    pub fn ack(&mut self, id: &str, reply: &HttpReply) {
        let acked = match reply.status.as_u16() {
            200 | 201 => Acked {
                user: Some(reply.json()),
                version: reply.etag(),
            },
            204 => Acked {
                user: None,
                version: 0,
            },
            other => panic!("{}: {other} acknowledges nothing", reply.request),
        };
        self.0.insert(id.to_owned(), acked);
    }

    /// Sends `write` (no retry: the scenario expects it to succeed) and records the answer.
    pub async fn write(&mut self, api: &Api, write: Write) {
        let reply = write
            .send(api)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", write.describe()));
        write.check(&reply);
        self.ack(&write.id, &reply);
    }

    /// Adds another ledger's records (disjoint ids).
    pub fn merge(&mut self, other: Ledger) {
        self.0.extend(other.0);
    }

    /// The records of partition `p`.
    pub fn in_partition(&self, p: PartitionId) -> Ledger {
        Ledger(
            self.0
                .iter()
                .filter(|(id, _)| partition(id) == p)
                .map(|(id, a)| (id.clone(), a.clone()))
                .collect(),
        )
    }

    /// How many records exist (not deleted).
    pub fn live(&self) -> u64 {
        self.0.values().filter(|a| a.user.is_some()).count() as u64
    }

    /// Every `step`-th record.
    pub fn sample(&self, step: usize) -> Ledger {
        Ledger(
            self.0
                .iter()
                .step_by(step.max(1))
                .map(|(id, a)| (id.clone(), a.clone()))
                .collect(),
        )
    }
}

/// Through the gateway, every record reads back as acknowledged (content and ETag), and
/// every deleted one is 404.
pub async fn assert_gateway_serves(api: &Api, ledger: &Ledger) {
    let checks = ledger.0.iter().map(|(id, acked)| async move {
        let reply = api.get(id).await;
        match &acked.user {
            Some(user) => {
                assert_eq!(reply.status, StatusCode::OK, "GET {id:?}: {}", reply.text);
                assert_eq!(&reply.json(), user, "GET {id:?}");
                assert_eq!(reply.etag(), acked.version, "GET {id:?}: version");
            }
            None => assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "GET {id:?} (deleted): {}",
                reply.text
            ),
        }
    });
    futures::stream::iter(checks)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// The copy of partition `p` with `role`, asked directly over NATS, holds every record of
/// `ledger` in `p` as acknowledged (content and version) and none of the deleted ones.
pub async fn assert_copy_holds(cluster: &Cluster, p: PartitionId, role: Role, ledger: &Ledger) {
    let copy = cluster.copy(p, role).await;
    let subject = copy.subject(Op::Get);
    let ledger = ledger.in_partition(p);
    let checks = ledger.0.iter().map(|(id, acked)| {
        let copy = copy.clone();
        let subject = &subject;
        async move {
            match (copy.get(id).await, &acked.user) {
                (Ok(Reply::User(found)), Some(user)) => {
                    let found_user = serde_json::to_value(&found.user).expect("users serialise");
                    assert_eq!(&found_user, user, "{subject} {id:?}");
                    assert_eq!(found.version, acked.version, "{subject} {id:?}: version");
                }
                (Err(ProtocolError::NotFound), None) => {}
                (answer, expected) => {
                    panic!("{subject} {id:?}: answered {answer:?}, acknowledged {expected:?}")
                }
            }
        }
    });
    futures::stream::iter(checks)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// The copy of partition `p` with `role` counts exactly `expected` records.
pub async fn assert_copy_count(cluster: &Cluster, p: PartitionId, role: Role, expected: u64) {
    let copy = cluster.copy(p, role).await;
    match copy.count(None).await {
        Ok(Reply::Count { count }) => assert_eq!(
            count,
            expected,
            "{}: records in the copy",
            copy.subject(Op::Count)
        ),
        other => panic!("{}: {other:?}", copy.subject(Op::Count)),
    }
}

/// The copy holds exactly the acknowledged records of its partition, nothing more (the whole
/// scenario's writes are in `ledger`).
pub async fn assert_copy_equals(cluster: &Cluster, p: PartitionId, role: Role, ledger: &Ledger) {
    assert_copy_holds(cluster, p, role, ledger).await;
    assert_copy_count(cluster, p, role, ledger.in_partition(p).live()).await;
}
