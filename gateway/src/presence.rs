//! The gateway's view of which dbnodes are alive, from their `ringstore.presence.{node}`
//! heartbeats. A node silent for [`SILENT_AFTER`] is tried last instead of first, so a dead
//! primary costs no timeout.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{subjects, NodeId, NodeState, Presence};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A node not heard from for this long is presumed down.
pub const SILENT_AFTER: Duration = Duration::from_secs(3);

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

    /// Follows the heartbeats until `shutdown`.
    pub async fn follow(self: Arc<Self>, client: async_nats::Client, shutdown: CancellationToken) {
        let mut heartbeats = match client.subscribe(subjects::PRESENCE_ALL).await {
            Ok(sub) => sub,
            Err(e) => {
                warn!(error = %e, "cannot follow presence; routing without it");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = heartbeats.next() => match msg {
                    Some(msg) => match serde_json::from_slice::<Presence>(&msg.payload) {
                        Ok(presence) => self.record(presence),
                        Err(e) => warn!(subject = %msg.subject, error = %e, "bad heartbeat"),
                    },
                    None => return,
                },
            }
        }
    }
}
