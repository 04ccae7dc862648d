//! The partition hash and the partition → node map.
//!
//! A record's partition is `fnv1a64(id as UTF-8) mod partitions`: FNV-1a with the standard
//! 64-bit offset basis `0xcbf29ce484222325` and prime `0x100000001b3`. It is stable across
//! processes, machines and Rust versions (unlike `DefaultHasher`), so every client and node
//! agrees on where a record lives. Partitions and nodes are distinct types: today node `db-i`
//! is primary of partition `i` and replica of `i − 1`; a different map changes only
//! [`PartitionMap`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// A partition number, `0..partitions`.
pub type PartitionId = u32;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The partition of a record id among `partitions` partitions.
pub fn partition_of(id: &str, partitions: u32) -> PartitionId {
    (fnv1a64(id.as_bytes()) % u64::from(partitions.max(1))) as PartitionId
}

/// A dbnode's identity, `db-{index}` (the `DB_INSTANCE_ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "db-{}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix("db-")
            .and_then(|n| n.parse().ok())
            .map(NodeId)
            .ok_or_else(|| format!("node id must look like db-0, db-1, …; got {s:?}"))
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The role a node plays for a partition it hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes the partition's writes and reads.
    Primary,
    /// Holds a copy, serves reads, and takes over writes while the primary is down.
    Replica,
}

impl Role {
    /// The word used in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// Which node holds which partition in which role. Nodes are as many as partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMap {
    /// Number of partitions (and of nodes).
    pub partitions: u32,
}

impl PartitionMap {
    /// A map over `partitions` partitions (at least 1).
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: partitions.max(1),
        }
    }

    /// The partition of a record id.
    pub fn partition_of(&self, id: &str) -> PartitionId {
        partition_of(id, self.partitions)
    }

    /// All partitions.
    pub fn all(&self) -> impl Iterator<Item = PartitionId> {
        0..self.partitions
    }

    /// The node that is primary of `p`.
    pub fn primary(&self, p: PartitionId) -> NodeId {
        NodeId(p)
    }

    /// The node that holds the replica of `p`, if there is more than one node.
    pub fn replica(&self, p: PartitionId) -> Option<NodeId> {
        (self.partitions > 1).then(|| NodeId((p + 1) % self.partitions))
    }

    /// Every node of the ring, in order.
    pub fn nodes(&self) -> Vec<NodeId> {
        (0..self.partitions).map(NodeId).collect()
    }

    /// The partitions `node` hosts with its role for each: primary first.
    pub fn hosted(&self, node: NodeId) -> Vec<(PartitionId, Role)> {
        let own = node.0 % self.partitions;
        let mut hosted = vec![(own, Role::Primary)];
        if self.partitions > 1 {
            hosted.push(((own + self.partitions - 1) % self.partitions, Role::Replica));
        }
        hosted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partition_vectors() {
        // Changing any of these moves existing records: never change them.
        let vectors = [
            ("13AE742", 3, 2),
            ("a", 3, 1),
            ("user-1", 3, 2),
            ("üñí€", 3, 2),
            ("a", 5, 1),
        ];
        for (id, n, p) in vectors {
            assert_eq!(partition_of(id, n), p, "{id}");
        }
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn ring_roles() {
        let map = PartitionMap::new(3);
        assert_eq!(
            map.hosted(NodeId(0)),
            [(0, Role::Primary), (2, Role::Replica)]
        );
        assert_eq!(
            map.hosted(NodeId(1)),
            [(1, Role::Primary), (0, Role::Replica)]
        );
        assert_eq!(map.replica(2), Some(NodeId(0)));
        assert_eq!(PartitionMap::new(1).hosted(NodeId(0)), [(0, Role::Primary)]);
        assert_eq!(PartitionMap::new(1).replica(0), None);
    }

    #[test]
    fn node_ids_parse() {
        assert_eq!("db-2".parse::<NodeId>(), Ok(NodeId(2)));
        assert!("node2".parse::<NodeId>().is_err());
        assert_eq!(NodeId(7).to_string(), "db-7");
    }
}
