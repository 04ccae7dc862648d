//! The gateway's view of which dbnodes are alive: every [`HEARTBEAT`] it asks each node of
//! the map how it is (`ringstore.node.{node}.ping`, answered with the node's presence). A node
//! that has not answered for [`SILENT_AFTER`] is tried last instead of first, so a dead primary
//! costs no timeout.
//!
//! Asked, not heard: only a process with `{node}`'s NATS identity may answer on that node's
//! ping subject, and the answer comes back to this gateway's own inbox, so nothing about a
//! node is believed from another identity; and only the map's nodes are asked, so no message
//! can grow the table (docs/security.md).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protocol::timing::{HEARTBEAT, SILENT_AFTER};
use protocol::{subjects, NodeId, NodeState, PartitionMap, Presence};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long one ask waits for its answer.
const ASK_WAIT: Duration = Duration::from_millis(750);

/// The latest heartbeat of every node.
pub struct PresenceTable {
    started: Instant,
    nodes: RwLock<HashMap<NodeId, (Instant, Presence)>>,
}

impl Default for PresenceTable {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            nodes: RwLock::default(),
        }
    }
}

impl PresenceTable {
    /// Records a heartbeat.
    pub fn record(&self, presence: Presence) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.insert(presence.node, (Instant::now(), presence));
    }

    /// True if `node` announced `ready` within [`SILENT_AFTER`]. Before the gateway has
    /// listened that long, a node not heard from yet gets the benefit of the doubt.
    pub fn is_live(&self, node: NodeId) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        match nodes.get(&node) {
            Some((at, presence)) => {
                at.elapsed() < SILENT_AFTER && presence.state == NodeState::Ready
            }
            None => self.started.elapsed() < SILENT_AFTER,
        }
    }

    /// Every node heard from, with the time since its last heartbeat, ordered by node id.
    pub fn snapshot(&self) -> Vec<(Duration, Presence)> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = nodes
            .values()
            .map(|(at, p)| (at.elapsed(), p.clone()))
            .collect();
        all.sort_by_key(|(_, p)| p.node);
        all
    }

    /// Asks every node of `map` how it is, every [`HEARTBEAT`], until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        client: async_nats::Client,
        map: Arc<PartitionMap>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let nodes = map.nodes().to_vec();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let asks = nodes.iter().map(|&node| self.ask(&client, node));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = futures::future::join_all(asks) => {}
            }
        }
    }

    /// Asks `node` how it is and records the answer, if it is that node's.
    async fn ask(&self, client: &async_nats::Client, node: NodeId) {
        let request = async_nats::Request::new().timeout(Some(ASK_WAIT));
        let Ok(reply) = client
            .send_request(subjects::node_ping(node), request)
            .await
        else {
            return;
        };
        match serde_json::from_slice::<Presence>(&reply.payload) {
            Ok(presence) if presence.node == node => self.record(presence),
            Ok(presence) => {
                debug!(%node, claimed = %presence.node, "a ping answered for another node")
            }
            Err(e) => debug!(%node, error = %e, "an answer that is not a presence"),
        }
    }
}
