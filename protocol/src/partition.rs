//! The partition hash and the partition → node map.
//!
//! A record's partition is `fnv1a64(id as UTF-8) mod partitions`: FNV-1a with the standard
//! 64-bit offset basis `0xcbf29ce484222325` and prime `0x100000001b3`. It is stable across
//! processes, machines and Rust versions (unlike `DefaultHasher`), so every client and node
//! agrees on where a record lives. Partitions and nodes are distinct types: which node holds
//! which partition is the [`PartitionMap`]'s, and only its, to say.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The partition count of a deployment provisioned without `PARTITIONS`: enough for the
/// default 3 nodes to grow to 12, at an idle cost measured in BENCHMARKS.md ("Partitions").
pub const DEFAULT_PARTITIONS: u32 = 12;

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

/// The holders of one partition: its primary and, with more than one node, its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    /// Takes the partition's writes.
    pub primary: NodeId,
    /// Holds the second copy; `None` on a ring of one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<NodeId>,
}

/// Which node holds which partition in which role: the one place the ring is written down
/// (docs/design.md "The partition map"). Stored in NATS by `dbnode --provision`; every other
/// process reads it from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// Grows on every change of the map; the first map is epoch 1.
    pub epoch: u64,
    /// The ring's nodes, in ring order.
    pub nodes: Vec<NodeId>,
    /// Per partition (the index is the partition id), its holders.
    pub partitions: Vec<Holders>,
}

/// Why a partition map cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition map: {0}")]
pub struct MapError(pub String);

impl PartitionMap {
    /// The first map of a deployment of `partitions` partitions over nodes `db-0..db-{nodes-1}`:
    /// partition `p` has primary `db-{p mod nodes}` and replica that node's successor on the
    /// ring, so each node is primary of its own partitions and replica of its predecessor's.
    pub fn initial(partitions: u32, nodes: u32) -> Result<Self, MapError> {
        if partitions == 0 || nodes == 0 || nodes > partitions {
            return Err(MapError(format!(
                "{nodes} node(s) for {partitions} partition(s): there must be at least one \
                 partition, and from 1 to PARTITIONS nodes"
            )));
        }
        let holders = (0..partitions)
            .map(|p| Holders {
                primary: NodeId(p % nodes),
                replica: (nodes > 1).then(|| NodeId((p % nodes + 1) % nodes)),
            })
            .collect();
        Ok(Self {
            epoch: 1,
            nodes: (0..nodes).map(NodeId).collect(),
            partitions: holders,
        })
    }

    /// Checks a map read from elsewhere: at least one partition, every holder a node of the
    /// ring, a replica other than its primary, every node of the ring distinct.
    pub fn validate(&self) -> Result<(), MapError> {
        let fail = |why: String| Err(MapError(why));
        if self.partitions.is_empty() || self.nodes.is_empty() {
            return fail("no partitions or no nodes".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if !self.nodes.iter().all(|n| seen.insert(*n)) {
            return fail("a node is on the ring twice".into());
        }
        for (p, h) in self.partitions.iter().enumerate() {
            let holders = std::iter::once(h.primary).chain(h.replica);
            if let Some(stranger) = holders.into_iter().find(|n| !seen.contains(n)) {
                return fail(format!(
                    "P{p} is held by {stranger}, not a node of the ring"
                ));
            }
            if h.replica == Some(h.primary) {
                return fail(format!("P{p} has {} as primary and replica", h.primary));
            }
        }
        Ok(())
    }

    /// Number of partitions.
    pub fn count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The partition of a record id.
    pub fn partition_of(&self, id: &str) -> PartitionId {
        partition_of(id, self.count())
    }

    /// All partitions.
    pub fn all(&self) -> impl Iterator<Item = PartitionId> {
        0..self.count()
    }

    /// The node that is primary of `p`.
    pub fn primary(&self, p: PartitionId) -> NodeId {
        self.partitions[p as usize].primary
    }

    /// The node that holds the replica of `p`, if there is more than one node.
    pub fn replica(&self, p: PartitionId) -> Option<NodeId> {
        self.partitions[p as usize].replica
    }

    /// Every node of the ring, in order.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The partitions `node` holds with its role for each: its primaries first, then its
    /// replicas, each in partition order. Empty for a node the map does not name.
    pub fn hosted(&self, node: NodeId) -> Vec<(PartitionId, Role)> {
        let roles = [Role::Primary, Role::Replica];
        roles
            .into_iter()
            .flat_map(|role| {
                self.all().filter_map(move |p| {
                    let h = self.partitions[p as usize];
                    let holder = match role {
                        Role::Primary => Some(h.primary),
                        Role::Replica => h.replica,
                    };
                    (holder == Some(node)).then_some((p, role))
                })
            })
            .collect()
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
        let map = PartitionMap::initial(3, 3).unwrap();
        assert_eq!(
            map.hosted(NodeId(0)),
            [(0, Role::Primary), (2, Role::Replica)]
        );
        assert_eq!(
            map.hosted(NodeId(1)),
            [(1, Role::Primary), (0, Role::Replica)]
        );
        assert_eq!(map.replica(2), Some(NodeId(0)));
        let one = PartitionMap::initial(1, 1).unwrap();
        assert_eq!(one.hosted(NodeId(0)), [(0, Role::Primary)]);
        assert_eq!(one.replica(0), None);
    }

    #[test]
    fn more_partitions_than_nodes_spread_evenly_on_the_ring() {
        let map = PartitionMap::initial(12, 5).unwrap();
        assert_eq!(map.primary(7), NodeId(2));
        assert_eq!(map.replica(7), Some(NodeId(3)));
        assert_eq!(map.replica(4), Some(NodeId(0)));
        let primaries: Vec<usize> = map
            .nodes()
            .iter()
            .map(|&n| {
                map.hosted(n)
                    .iter()
                    .filter(|(_, r)| *r == Role::Primary)
                    .count()
            })
            .collect();
        assert_eq!(primaries, [3, 3, 2, 2, 2]);
        // Each node holds the replicas of exactly its predecessor's partitions.
        for (i, &node) in map.nodes().iter().enumerate() {
            let before = map.nodes()[(i + 4) % 5];
            let replicas: Vec<_> = map
                .hosted(node)
                .into_iter()
                .filter(|(_, r)| *r == Role::Replica)
                .map(|(p, _)| p)
                .collect();
            let predecessor: Vec<_> = map
                .hosted(before)
                .into_iter()
                .filter(|(_, r)| *r == Role::Primary)
                .map(|(p, _)| p)
                .collect();
            assert_eq!(replicas, predecessor, "{node}");
        }
        assert_eq!(map.hosted(NodeId(9)), []);
        map.validate().unwrap();
    }

    #[test]
    fn impossible_maps_are_refused() {
        assert!(PartitionMap::initial(3, 4).is_err());
        assert!(PartitionMap::initial(0, 0).is_err());
        let mut map = PartitionMap::initial(4, 2).unwrap();
        map.partitions[1].replica = Some(NodeId(7));
        assert!(map.validate().is_err());
        let mut map = PartitionMap::initial(4, 2).unwrap();
        map.partitions[2].replica = Some(map.partitions[2].primary);
        assert!(map.validate().is_err());
        let json = serde_json::to_string(&PartitionMap::initial(2, 2).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"epoch":1,"nodes":["db-0","db-1"],"partitions":[{"primary":"db-0","replica":"db-1"},{"primary":"db-1","replica":"db-0"}]}"#
        );
    }

    #[test]
    fn node_ids_parse() {
        assert_eq!("db-2".parse::<NodeId>(), Ok(NodeId(2)));
        assert!("node2".parse::<NodeId>().is_err());
        assert_eq!(NodeId(7).to_string(), "db-7");
    }
}
