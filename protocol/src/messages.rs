//! Requests, replies and log entries. All are JSON.

use serde::{Deserialize, Serialize};

use crate::{NodeId, Op, PartitionId, ProtocolError, Role, User, UserPatch};

/// `…{role}.get`: read one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The record id.
    pub id: String,
    /// Read-your-writes: the copy must have applied at least this partition sequence, else it
    /// waits briefly and then answers [`ProtocolError::Behind`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_seq: u64,
    /// The log epoch `min_seq` belongs to ([`Response::epoch`]); a copy applying a later
    /// epoch's log (a recreated log) is past it whatever its sequence. 0: the copy's own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The sender's deadline (Unix ms, [`crate::timing`]); a copy that receives the request
    /// later drops it. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
}

/// `…{role}.scan`: up to `limit` records with ids after `after`, in bytewise id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    /// Exclusive lower bound; `None` starts at the first id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Only records of this group (uses the group index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Read-your-writes, as in [`GetRequest`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_seq: u64,
    /// The log epoch `min_seq` belongs to ([`Response::epoch`]); a copy applying a later
    /// epoch's log (a recreated log) is past it whatever its sequence. 0: the copy's own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The sender's deadline (Unix ms, [`crate::timing`]); a copy that receives the request
    /// later drops it. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
}

/// `…{role}.count`: the number of records, in total or in one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRequest {
    /// Only records of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Read-your-writes, as in [`GetRequest`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_seq: u64,
    /// The log epoch `min_seq` belongs to ([`Response::epoch`]); a copy applying a later
    /// epoch's log (a recreated log) is past it whatever its sequence. 0: the copy's own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The sender's deadline (Unix ms, [`crate::timing`]); a copy that receives the request
    /// later drops it. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The change a write asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteKind {
    /// Create `user`; fails with `AlreadyExists` if the id is taken.
    Create {
        /// The full record.
        user: User,
    },
    /// Change the given fields of an existing record.
    Update {
        /// The record id.
        id: String,
        /// The fields to change.
        patch: UserPatch,
        /// Apply only if the record's version is one of these (`If-Match`; empty never matches).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<Vec<u64>>,
    },
    /// Delete a record.
    Delete {
        /// The record id.
        id: String,
        /// Apply only if the record's version is one of these (`If-Match`; empty never matches).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<Vec<u64>>,
    },
}

impl WriteKind {
    /// The op (and so the request subject) of this kind of write.
    pub fn op(&self) -> Op {
        match self {
            WriteKind::Create { .. } => Op::Create,
            WriteKind::Update { .. } => Op::Update,
            WriteKind::Delete { .. } => Op::Delete,
        }
    }

    /// The id of the record the write touches.
    pub fn id(&self) -> &str {
        match self {
            WriteKind::Create { user } => &user.id,
            WriteKind::Update { id, .. } | WriteKind::Delete { id, .. } => id,
        }
    }
}

/// `…{role}.{create,update,delete}`: a write. A retry carries the same `request_id`, and a
/// writer that finds the id already applied returns the first outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// Unique per logical request (UUID, or derived from an `Idempotency-Key`).
    pub request_id: String,
    /// The sender's deadline (Unix ms, [`crate::timing`]); a copy that receives the request
    /// later drops it. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
    /// The change.
    #[serde(flatten)]
    pub kind: WriteKind,
}

/// The longest request id a write may carry: it becomes the log entry's `Nats-Msg-Id` header.
pub const MAX_REQUEST_ID: usize = 128;

impl WriteRequest {
    /// Checks what a dbnode must not take on trust from the wire, as the gateway checks an
    /// HTTP body: a request id that is a safe header value (1–128 visible ASCII characters),
    /// and the record's id and fields by the record rules. Every offending field is named.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        use crate::user::{check, id_rule};
        let mut fields = Vec::new();
        let id_ok = (1..=MAX_REQUEST_ID).contains(&self.request_id.len())
            && self.request_id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            fields.push(crate::FieldError::new(
                "request_id",
                format!("must be 1-{MAX_REQUEST_ID} visible ASCII characters"),
            ));
        }
        let checked = match &self.kind {
            WriteKind::Create { user } => check(user),
            WriteKind::Update { id, patch, .. } => {
                let mut errors = check(patch).err().unwrap_or_default();
                if let Err(e) = id_rule(id, &()) {
                    errors.push(crate::FieldError::new("id", e.message()));
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors)
                }
            }
            WriteKind::Delete { id, .. } => {
                id_rule(id, &()).map_err(|e| vec![crate::FieldError::new("id", e.message())])
            }
        };
        fields.extend(checked.err().unwrap_or_default());
        if fields.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Invalid { fields })
        }
    }
}

/// A record with its version: the partition-log sequence of its last write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedUser {
    /// The record.
    pub user: User,
    /// Its version.
    pub version: u64,
}

/// A successful answer. The wire form of an answer is `Result<Reply, ProtocolError>`:
/// `{"Ok": …}` or `{"Err": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// The record (get, create, update).
    User(VersionedUser),
    /// The record was deleted by the write at `version`.
    Deleted {
        /// The partition sequence of the delete.
        version: u64,
    },
    /// A page of a scan.
    Page {
        /// Records in bytewise id order.
        items: Vec<User>,
        /// True if the partition has more records after the last item.
        more: bool,
    },
    /// A count.
    Count {
        /// The number of records.
        count: u64,
    },
}

impl Reply {
    /// The answer to a write that left `record` (`None`: deleted) at `version`.
    pub fn written(record: Option<User>, version: u64) -> Reply {
        match record {
            Some(user) => Reply::User(VersionedUser { user, version }),
            None => Reply::Deleted { version },
        }
    }

    /// The partition sequence a write answer reflects (`None` for scans and counts).
    pub fn version(&self) -> Option<u64> {
        match self {
            Reply::User(v) => Some(v.version),
            Reply::Deleted { version } => Some(*version),
            Reply::Page { .. } | Reply::Count { .. } => None,
        }
    }
}

/// What a dbnode answers to any request.
pub type Answer = Result<Reply, ProtocolError>;

/// The wire form of every dbnode answer: the answer and the partition-log sequence it was
/// based on, so that the gateway never later reads from a copy that is behind what it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// What the copy answered.
    pub answer: Answer,
    /// The log sequence the answer reflects: a write's commit, the version a refusal was
    /// verified against, the sequence up to which a reading copy is consistent with the log.
    #[serde(default)]
    pub seen: u64,
    /// Which log `seen` counts in: the creation time (ns) of the partition's stream. A
    /// recreated log starts its sequences over, under a later epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

impl Response {
    /// An answer based on the log up to `seen` (the epoch is filled in by the partition).
    pub fn new(answer: Answer, seen: u64) -> Self {
        Self {
            answer,
            seen,
            epoch: 0,
        }
    }
}

/// One message of a partition's log: the full resulting record or a tombstone. Its version is
/// the message's stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The record id.
    pub id: String,
    /// The record after the write; `None` is a delete.
    pub record: Option<User>,
    /// The node that wrote it.
    pub writer: NodeId,
    /// The request that caused it.
    pub request_id: String,
    /// The record's group before the write (`None`: it did not exist, or an entry written
    /// before this field was). A change feed filtered by group passes a record that leaves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_before: Option<u32>,
    /// The sequence of the record's latest log entry before this one, tombstones included (0:
    /// it had none): the entry was appended on the condition that it still was. `None` in an
    /// entry written before this field was. A copy that holds the log's prefix up to that
    /// sequence holds the record as `group_before` describes it, and need not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_before: Option<u64>,
}

impl LogEntry {
    /// The answer to the write that made this entry, committed at `seq`.
    pub fn outcome(&self, seq: u64) -> Reply {
        Reply::written(self.record.clone(), seq)
    }
}

/// A node's life-cycle state, as announced in presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Replaying its partitions' logs; not serving.
    CatchingUp,
    /// Serving every hosted partition.
    Ready,
}

/// One hosted partition in a presence heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresencePartition {
    /// The partition.
    pub partition: PartitionId,
    /// The node's role for it.
    pub role: Role,
    /// The last log sequence applied locally.
    pub applied: u64,
    /// Log entries not yet applied (0 when caught up).
    pub lag: u64,
}

/// `ringstore.presence.{node}`, published every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The node.
    pub node: NodeId,
    /// Random per process, to tell two processes claiming one node id apart.
    pub instance: String,
    /// Catching up or ready.
    pub state: NodeState,
    /// Hosted partitions.
    pub partitions: Vec<PresencePartition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_requests_are_flat_json() {
        let req = WriteRequest {
            request_id: "r1".into(),
            deadline: 0,
            kind: WriteKind::Delete {
                id: "a.b".into(),
                if_match: Some(vec![4]),
            },
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            json!({"request_id": "r1", "kind": "delete", "id": "a.b", "if_match": [4]})
        );
        assert_eq!(serde_json::from_value::<WriteRequest>(v).unwrap(), req);
    }

    #[test]
    fn writes_from_the_wire_are_validated_like_http_bodies() {
        let user = |id: &str, group| User {
            id: id.into(),
            name: "Ann".into(),
            email: "ann@example.com".into(),
            group,
        };
        let write = |request_id: &str, user| WriteRequest {
            request_id: request_id.into(),
            deadline: 0,
            kind: WriteKind::Create { user },
        };
        assert_eq!(write("r1", user("a", 1)).validate(), Ok(()));
        let fields = |w: WriteRequest| match w.validate() {
            Err(ProtocolError::Invalid { fields }) => {
                fields.into_iter().map(|f| f.field).collect::<Vec<_>>()
            }
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(fields(write("r\r\n1", user("a", 1))), ["request_id"]);
        assert_eq!(
            fields(write(&"r".repeat(129), user("a", 1))),
            ["request_id"]
        );
        assert_eq!(
            fields(write("", user("a/b\u{7}", u32::MAX))),
            ["request_id", "group", "id"]
        );
        assert_eq!(fields(write("r", user(&"x".repeat(3000), 1))), ["id"]);
    }

    #[test]
    fn answers_round_trip() {
        let ok: Answer = Ok(Reply::Deleted { version: 9 });
        let err: Answer = Err(ProtocolError::Behind { applied: 3 });
        for a in [ok, err] {
            let bytes = serde_json::to_vec(&a).unwrap();
            assert_eq!(serde_json::from_slice::<Answer>(&bytes).unwrap(), a);
        }
    }
}
