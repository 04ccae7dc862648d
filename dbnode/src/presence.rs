//! Presence: a heartbeat on `ringstore.presence.{node}` every second, and the guard that
//! keeps two processes from serving one node id.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use protocol::{subjects, NodeId, NodeState, Presence};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::partition::Partition;

/// Interval between heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The state of the live process that answers for `node`, if one does.
pub async fn node_state(client: &async_nats::Client, node: NodeId) -> Option<NodeState> {
    let request = async_nats::Request::new().timeout(Some(Duration::from_millis(750)));
    let reply = client
        .send_request(subjects::node_ping(node), request)
        .await
        .ok()?;
    // Any answer means the id is taken; an older process may answer with something else.
    Some(serde_json::from_slice(&reply.payload).unwrap_or(NodeState::CatchingUp))
}

/// Publishes heartbeats and answers `ringstore.node.{node}.ping` until `shutdown`. If another
/// process announces the same node id, it cancels `shutdown` with `conflict` set: two writers
/// for one node id would be a split brain.
pub async fn run(
    client: async_nats::Client,
    node: NodeId,
    instance: String,
    state: watch::Receiver<NodeState>,
    partitions: Vec<Arc<Partition>>,
    shutdown: CancellationToken,
    conflict: CancellationToken,
) -> Result<(), async_nats::Error> {
    let mut pings = client.subscribe(subjects::node_ping(node)).await?;
    let mut others = client.subscribe(subjects::presence(node)).await?;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let presence = Presence {
                    node,
                    instance: instance.clone(),
                    state: *state.borrow(),
                    partitions: partitions.iter().map(|p| p.status()).collect(),
                };
                let payload = serde_json::to_vec(&presence).expect("presence serialises");
                if let Err(e) = client.publish(subjects::presence(node), payload.into()).await {
                    warn!(error = %e, "presence not published");
                }
            }
            Some(ping) = pings.next() => {
                // The answer is the node's state, for `dbnode --check` (container healthchecks).
                if let Some(reply) = ping.reply {
                    let answer = serde_json::to_vec(&*state.borrow()).expect("states serialise");
                    let _ = client.publish(reply, answer.into()).await;
                }
            }
            Some(msg) = others.next() => {
                let Ok(seen) = serde_json::from_slice::<Presence>(&msg.payload) else { continue };
                if seen.instance != instance {
                    error!(%node, other = seen.instance, "another process serves this node id; stopping");
                    conflict.cancel();
                    shutdown.cancel();
                }
            }
        }
    }
}
