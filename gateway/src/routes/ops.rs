//! Operations: liveness, readiness, metrics and the cluster view (`/api/cluster`, which the
//! status page reads).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use crate::error::{ApiError, Problem};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Liveness: the gateway process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}

/// Readiness: NATS connected and every partition answering.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.store.ready().await {
        Ok("ready")
    } else {
        Err(ApiError::Protocol(protocol::ProtocolError::Unavailable(
            "NATS is not connected or a partition does not answer".into(),
        )))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.metrics.observe_presence(&state.presence.snapshot());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The dbnodes as their heartbeats describe them: state, liveness, and per hosted partition
/// its role, applied log sequence and replication lag.
#[utoipa::path(get, path = "/api/cluster", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "Every dbnode heard from", body = ClusterView)))]
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<ClusterView> {
    let nodes = state
        .presence
        .snapshot()
        .into_iter()
        .map(|(silent_for, presence)| NodeView {
            node: presence.node,
            state: presence.state,
            live: state.presence.is_live(presence.node),
            last_seen_ms: silent_for.as_millis() as u64,
            partitions: presence.partitions,
        })
        .collect();
    let partitions = match &state.logs {
        Some(logs) => {
            let map = &logs.map;
            futures::future::join_all(map.all().map(|p| async move {
                PartitionView {
                    partition: p,
                    primary: map.primary(p),
                    replica: map.replica(p),
                    log: logs.view(p).await,
                }
            }))
            .await
        }
        None => Vec::new(),
    };
    Json(ClusterView {
        nodes,
        partitions,
        nats: state.logs.as_ref().map(|logs| logs.nats()),
        traffic: state.metrics.traffic(),
        latency_buckets_ms: Metrics::latency_buckets_ms(),
        change_feeds: state.metrics.feeds_open(),
    })
}

/// `GET /api/cluster`: the dbnodes heard from, the partitions and their logs, the NATS
/// server, and this gateway's traffic.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The dbnodes, by id.
    pub nodes: Vec<NodeView>,
    /// The partitions: which nodes hold them, and their logs.
    pub partitions: Vec<PartitionView>,
    /// The NATS server this gateway is connected to (absent without NATS).
    pub nats: Option<crate::logs::NatsView>,
    /// This gateway's HTTP requests since it started, by route and method.
    pub traffic: Vec<crate::metrics::RouteTraffic>,
    /// The upper bounds (ms) of the latency buckets in `traffic`.
    pub latency_buckets_ms: Vec<f64>,
    /// Change feeds open on this gateway.
    pub change_feeds: u64,
}

/// One partition in [`ClusterView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// The partition.
    pub partition: protocol::PartitionId,
    /// Its primary's node.
    #[schema(value_type = String, example = "db-0")]
    pub primary: protocol::NodeId,
    /// Its replica's node (none in a one-node ring).
    #[schema(value_type = Option<String>, example = "db-1")]
    pub replica: Option<protocol::NodeId>,
    /// Its log, when it could be read.
    pub log: Option<crate::logs::LogView>,
}

/// One dbnode in [`ClusterView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// `db-{i}`.
    #[schema(value_type = String, example = "db-0")]
    pub node: protocol::NodeId,
    /// Its life-cycle state.
    pub state: protocol::NodeState,
    /// Heard from within 3 s and ready.
    pub live: bool,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Hosted partitions.
    pub partitions: Vec<protocol::PresencePartition>,
}
