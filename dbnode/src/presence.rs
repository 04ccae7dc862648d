//! Presence: a heartbeat on `ringstore.presence.{node}` every second, the answer to
//! `ringstore.node.{node}.ping`, and the guard that keeps two processes from serving one node
//! id.
//!
//! What other processes *decide* on comes from pings, not heartbeats: only a process logged in
//! as `{node}` may subscribe to `ringstore.node.{node}.>`, so an answer there is that node's,
//! and it comes back to the asker's own inbox. A heartbeat is only as good as the subject it
//! arrived on, and on the dbnodes' account another node's identity can make the NATS server
//! publish there (a JetStream answer addressed to a presence subject, say): a heartbeat that
//! claims another process serves this node id is therefore checked with a ping before this
//! process stops (docs/security.md).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use protocol::{subjects, NodeId, NodeState, Presence};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::partition::Partition;

/// Interval between heartbeats.
pub const HEARTBEAT: Duration = protocol::timing::HEARTBEAT;

/// How long a ping waits for answers.
const PING_WAIT: Duration = Duration::from_millis(750);

/// At most one check of a doubtful heartbeat per this interval, whatever arrives.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The state of the live process that answers for `node`, if one does.
pub async fn node_state(client: &async_nats::Client, node: NodeId) -> Option<NodeState> {
    let request = async_nats::Request::new().timeout(Some(PING_WAIT));
    let reply = client
        .send_request(subjects::node_ping(node), request)
        .await
        .ok()?;
    // Any answer means the id is taken; an older process may answer with its state alone.
    Some(
        serde_json::from_slice::<Presence>(&reply.payload)
            .map(|p| p.state)
            .or_else(|_| serde_json::from_slice(&reply.payload))
            .unwrap_or(NodeState::CatchingUp),
    )
}

/// Whether a process other than `instance` answers pings for `node` (within [`PING_WAIT`]).
async fn another_answers(client: &async_nats::Client, node: NodeId, instance: &str) -> bool {
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
        return false;
    };
    if client
        .publish_with_reply(subjects::node_ping(node), inbox, "".into())
        .await
        .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + PING_WAIT;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(presence) = serde_json::from_slice::<Presence>(&answer.payload) {
            if presence.instance != instance {
                return true;
            }
        }
    }
    false
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
    let mut checked = Instant::now() - CHECK_EVERY;
    let presence = || Presence {
        node,
        instance: instance.clone(),
        state: *state.borrow(),
        partitions: partitions.iter().map(|p| p.status()).collect(),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let payload = serde_json::to_vec(&presence()).expect("presence serialises");
                if let Err(e) = client.publish(subjects::presence(node), payload.into()).await {
                    warn!(error = %e, "presence not published");
                }
            }
            Some(ping) = pings.next() => {
                // The answer is the node's presence, for the gateways and `dbnode --check`.
                if let Some(reply) = ping.reply.filter(|r| subjects::is_answerable(r)) {
                    let answer = serde_json::to_vec(&presence()).expect("presence serialises");
                    let _ = client.publish(reply, answer.into()).await;
                }
            }
            Some(msg) = others.next() => {
                let Ok(seen) = serde_json::from_slice::<Presence>(&msg.payload) else { continue };
                if seen.instance == instance || checked.elapsed() < CHECK_EVERY {
                    continue;
                }
                checked = Instant::now();
                if another_answers(&client, node, &instance).await {
                    error!(%node, other = seen.instance, "another process serves this node id; stopping");
                    conflict.cancel();
                    shutdown.cancel();
                } else {
                    warn!(%node, claimed = seen.instance, "a heartbeat for this node id that no process answers for; ignored");
                }
            }
        }
    }
}
