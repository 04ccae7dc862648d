//! Every NATS subject and JetStream stream name ringstore uses. Record ids never appear in a
//! request subject, and appear in log subjects only hex-encoded.

use crate::{NodeId, PartitionId, Role};

/// Request/reply operations a dbnode serves per partition and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read one record.
    Get,
    /// Create a record.
    Create,
    /// Partially update a record.
    Update,
    /// Delete a record.
    Delete,
    /// A page of records in id order.
    Scan,
    /// Count records.
    Count,
}

impl Op {
    /// Every op, in subject order.
    pub const ALL: [Op; 6] = [
        Op::Get,
        Op::Create,
        Op::Update,
        Op::Delete,
        Op::Scan,
        Op::Count,
    ];

    /// The last token of the op's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Scan => "scan",
            Op::Count => "count",
        }
    }

    /// True for ops that change data.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Create | Op::Update | Op::Delete)
    }
}

/// `ringstore.part.{p}.{role}`: the service group a node serves for a hosted partition.
pub fn partition_group(p: PartitionId, role: Role) -> String {
    format!("ringstore.part.{p}.{}", role.as_str())
}

/// `ringstore.part.{p}.{role}.{op}`: where a request for `p` goes.
pub fn request(p: PartitionId, role: Role, op: Op) -> String {
    format!("{}.{}", partition_group(p, role), op.as_str())
}

/// `ringstore.part.{p}.primary.{op}`.
pub fn primary(p: PartitionId, op: Op) -> String {
    request(p, Role::Primary, op)
}

/// `ringstore.part.{p}.replica.{op}`: takeover writes and replica reads.
pub fn replica(p: PartitionId, op: Op) -> String {
    request(p, Role::Replica, op)
}

/// `ringstore.presence.{node}`: each dbnode's heartbeat.
pub fn presence(node: NodeId) -> String {
    format!("ringstore.presence.{node}")
}

/// Wildcard over every node's presence.
pub const PRESENCE_ALL: &str = "ringstore.presence.*";

/// `ringstore.node.{node}.ping`: answered by the live process that owns a node id, so that a
/// second process with the same `DB_INSTANCE_ID` can refuse to start.
pub fn node_ping(node: NodeId) -> String {
    format!("ringstore.node.{node}.ping")
}

/// `RINGSTORE_P{p}`: the partition's replication log.
pub fn stream_name(p: PartitionId) -> String {
    format!("RINGSTORE_P{p}")
}

/// `ringstore.log.{p}.>`: the subjects of the partition's stream.
pub fn log_filter(p: PartitionId) -> String {
    format!("ringstore.log.{p}.>")
}

/// `ringstore.log.{p}.{hex(id)}`: one subject per record, so the stream keeps the latest entry
/// of each record. Lower-case hex of the id's UTF-8 bytes is one safe subject token, whatever
/// the id holds.
pub fn log_subject(p: PartitionId, id: &str) -> String {
    format!("ringstore.log.{p}.{}", hex::encode(id))
}

/// `ringstore.log.{p}.check`: where a writer appends a *check marker*, conditional on a record's
/// latest entry, before it refuses a write on that entry: the condition is then verified by
/// the log's consensus, as a commit's is, and not by a read that a replaced log leader may
/// still answer from its old copy. `check` is no record's subject (those are lower-case hex);
/// the stream keeps only the newest marker; markers have an empty payload, which no entry has.
pub fn check_subject(p: PartitionId) -> String {
    format!("ringstore.log.{p}.check")
}

/// `ringstore.committed.{p}.>`: partition `p`'s commit hints. The writer that commits an entry
/// (the primary, or the replica in a takeover) publishes its sequence there
/// ([`committed_subject`], header `Nats-Sequence`), so that the other copy and the change
/// feeds read the log as soon as it moves instead of polling it. A hint, never data: whatever
/// arrives here only makes a reader look at the log, whose entries it reads by direct gets to
/// its own inbox.
pub fn committed_filter(p: PartitionId) -> String {
    format!("ringstore.committed.{p}.>")
}

/// `ringstore.committed.{p}.hint`: where a writer of partition `p` publishes its commits'
/// sequences.
pub fn committed_subject(p: PartitionId) -> String {
    format!("ringstore.committed.{p}.hint")
}

/// `ringstore.committed.>`: every partition's commit hints.
pub const COMMITTED_ALL: &str = "ringstore.committed.>";

/// `$JS.API.DIRECT.GET.RINGSTORE_P{p}`: a direct read of partition `p`'s log (JetStream's
/// direct get, in batches from a sequence on); the log is read this way, never through a
/// consumer (a consumer's deliver subject is chosen by whoever creates it, and could be a log
/// subject).
pub fn direct_get(p: PartitionId) -> String {
    format!("$JS.API.DIRECT.GET.{}", stream_name(p))
}

/// Whether a log message with `payload` is a check marker ([`check_subject`]): no change to
/// any record, stepped over by whatever reads the log.
pub fn is_check_marker(payload: &[u8]) -> bool {
    payload.is_empty()
}

/// Name of the NATS service every dbnode registers (`nats micro ls`).
pub const SERVICE_NAME: &str = "ringstore-dbnode";

/// Where requesters receive answers: dbnodes answer only subjects under it (async-nats's
/// default inbox prefix) or under [`IMPORTED_REPLY_PREFIX`], never a subject a dbnode could
/// otherwise write, such as a log's.
pub const INBOX_PREFIX: &str = "_INBOX.";

/// The reply subjects NATS gives requests that cross an account boundary (a service import):
/// the server maps the answer back to the requester's own inbox in the requester's account.
pub const IMPORTED_REPLY_PREFIX: &str = "_R_.";

/// Whether a request's `reply` subject is one a dbnode may answer: an inbox, or the server's
/// mapping of one across accounts. Anything else (a log or presence subject, say) is ignored.
pub fn is_answerable(reply: &str) -> bool {
    reply.starts_with(INBOX_PREFIX) || reply.starts_with(IMPORTED_REPLY_PREFIX)
}

/// The JetStream key-value bucket of `Idempotency-Key`s (stream `KV_ringstore_idempotency`):
/// one entry per key, expiring by age. Created by the dbnodes, used by the gateways.
pub const IDEMPOTENCY_BUCKET: &str = "ringstore_idempotency";

/// The JetStream key-value bucket of the partition map (stream `KV_ringstore_map`), written
/// only by the operator's identity (`dbnode --provision`), read by every process.
pub const MAP_BUCKET: &str = "ringstore_map";

/// The key of the partition map in [`MAP_BUCKET`].
pub const MAP_KEY: &str = "ring";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_subjects() {
        assert_eq!(primary(2, Op::Get), "ringstore.part.2.primary.get");
        assert_eq!(replica(0, Op::Delete), "ringstore.part.0.replica.delete");
        assert_eq!(presence(NodeId(1)), "ringstore.presence.db-1");
        assert_eq!(stream_name(4), "RINGSTORE_P4");
    }

    #[test]
    fn hostile_ids_are_encoded_into_one_safe_token() {
        for id in [
            "a.b",
            "a*b",
            "a>b",
            "$SRV.PING",
            "with space",
            "üñí€",
            "x\u{7f}",
        ] {
            let subject = log_subject(1, id);
            let token = subject.strip_prefix("ringstore.log.1.").unwrap();
            assert!(
                token.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id:?} -> {subject}"
            );
            assert_eq!(token.len(), id.len() * 2);
        }
        assert_eq!(log_subject(0, "a.b"), "ringstore.log.0.612e62");
    }
}
