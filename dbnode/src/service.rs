//! The NATS service: `ringstore.part.{p}.{role}.{op}` for every hosted partition, registered
//! with the NATS service API so that `$SRV.PING/INFO/STATS` (and `nats micro ls`) see it.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::{Request, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use protocol::{
    subjects, CountRequest, GetRequest, NodeId, Op, PartitionMap, ProtocolError, Response,
    ScanRequest, WriteRequest,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::partition::Partition;

fn invalid(e: serde_json::Error) -> ProtocolError {
    ProtocolError::Invalid {
        fields: vec![protocol::FieldError::new("", e.to_string())],
    }
}

/// A write is refused unless it is valid by the record rules, of the kind its subject names,
/// and for a record of this partition.
fn check_write(
    partition: &Partition,
    map: &PartitionMap,
    op: Op,
    request: &WriteRequest,
) -> Result<(), ProtocolError> {
    request.validate()?;
    let home = map.partition_of(request.kind.id());
    let mut fields = Vec::new();
    if request.kind.op() != op {
        fields.push(protocol::FieldError::new(
            "kind",
            format!("must be {} on this subject", op.as_str()),
        ));
    }
    if home != partition.id {
        fields.push(protocol::FieldError::new(
            "id",
            format!("belongs to partition {home}, not {}", partition.id),
        ));
    }
    match fields.is_empty() {
        true => Ok(()),
        false => Err(ProtocolError::Invalid { fields }),
    }
}

/// Handles one request on `partition` for `op`; a request that does not parse or check is
/// refused without touching the partition.
async fn handle(partition: &Partition, map: &PartitionMap, op: Op, payload: &[u8]) -> Response {
    fn parse<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ProtocolError> {
        serde_json::from_slice(payload).map_err(invalid)
    }
    let served = async {
        Ok(match op {
            Op::Get => partition.get(parse::<GetRequest>(payload)?).await,
            Op::Scan => partition.scan(parse::<ScanRequest>(payload)?).await,
            Op::Count => partition.count(parse::<CountRequest>(payload)?).await,
            Op::Create | Op::Update | Op::Delete => {
                let request = parse::<WriteRequest>(payload)?;
                check_write(partition, map, op, &request)?;
                partition.write(request).await
            }
        })
    };
    served
        .await
        .unwrap_or_else(|refusal: ProtocolError| Response::new(Err(refusal), 0))
}

async fn respond(partition: Arc<Partition>, map: Arc<PartitionMap>, op: Op, request: Request) {
    // A dbnode may publish into the partition logs: an answer addressed anywhere but a
    // requester's inbox (a log subject, say) could overwrite a record's only log entry. A
    // request without a reply subject (a message the server itself published, say) is
    // nobody's request.
    let to_inbox = request
        .message
        .reply
        .as_ref()
        .is_some_and(|reply| subjects::is_answerable(reply));
    if !to_inbox {
        warn!(
            partition = partition.id,
            op = op.as_str(),
            reply = ?request.message.reply,
            "request without an inbox to answer to; ignored"
        );
        return;
    }
    let answer = handle(&partition, &map, op, &request.message.payload).await;
    let payload = serde_json::to_vec(&answer).expect("answers serialise");
    if let Err(e) = request.respond(Ok(Bytes::from(payload))).await {
        warn!(partition = partition.id, op = op.as_str(), error = %e, "reply not sent");
    }
}

/// Serves every op of every partition until `shutdown`, then stops taking requests and waits
/// for those in flight.
pub async fn serve(
    client: async_nats::Client,
    node: NodeId,
    map: Arc<PartitionMap>,
    partitions: Vec<Arc<Partition>>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    let service = client
        .service_builder()
        .description("ringstore dbnode: partition primaries and replicas")
        .metadata(HashMap::from([("node".to_string(), node.to_string())]))
        .start(subjects::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await?;
    let in_flight = TaskTracker::new();
    let endpoints = TaskTracker::new();
    for partition in &partitions {
        let group = service.group(subjects::partition_group(partition.id, partition.role));
        for op in Op::ALL {
            let mut endpoint = group.endpoint(op.as_str()).await?;
            let (partition, in_flight, shutdown, map) = (
                partition.clone(),
                in_flight.clone(),
                shutdown.clone(),
                map.clone(),
            );
            endpoints.spawn(async move {
                loop {
                    let request = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        request = endpoint.next() => request,
                    };
                    let Some(request) = request else { break };
                    in_flight.spawn(respond(partition.clone(), map.clone(), op, request));
                }
                let _ = endpoint.stop().await;
            });
        }
    }
    shutdown.cancelled().await;
    endpoints.close();
    endpoints.wait().await;
    in_flight.close();
    in_flight.wait().await;
    service.stop().await?;
    Ok(())
}
