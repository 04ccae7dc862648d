//! Prometheus metrics: HTTP requests and latency per route and status, NATS request latency
//! per op, role and outcome. Each gateway instance owns its registry.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};
use protocol::Presence;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    nats_latency: HistogramVec,
    applied: IntGaugeVec,
    lag: IntGaugeVec,
    heartbeat_age: IntGaugeVec,
    feeds_open: IntGauge,
    feeds_ended: IntCounterVec,
    shed: IntCounter,
    impossible: IntCounterVec,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    connections_closed: IntCounterVec,
}

/// One route's requests in `/api/cluster`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RouteTraffic {
    /// The route (`/api/user/{id}`, …).
    pub route: String,
    /// The method.
    pub method: String,
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub server_errors: u64,
    /// Requests answered within each bucket of `latency_buckets_ms` (cumulative, like a
    /// Prometheus histogram).
    pub latency_buckets: Vec<u64>,
}

/// Counts a change feed as open while it lives.
pub struct OpenFeed(IntGauge);

impl Drop for OpenFeed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts an HTTP connection as open while it lives.
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Each metric is registered in the gateway's registry as it is made, once.
const REGISTERED: &str = "a valid metric, registered once";

impl Default for Metrics {
    fn default() -> Self {
        use prometheus::{
            register_histogram_vec_with_registry as histogram_vec,
            register_int_counter_vec_with_registry as counter_vec,
            register_int_counter_with_registry as counter,
            register_int_gauge_vec_with_registry as gauge_vec,
            register_int_gauge_with_registry as gauge,
        };
        let registry = Registry::new();
        let r = &registry;
        let by_route = &["route", "method", "status"];
        let by_copy = &["node", "partition", "role"];
        Self {
            http_requests: counter_vec!(
                "ringstore_http_requests_total",
                "HTTP requests by route, method and status",
                by_route,
                r
            ).expect(REGISTERED),
            http_latency: histogram_vec!(
                "ringstore_http_request_duration_seconds",
                "HTTP request latency",
                by_route,
                BUCKETS.to_vec(),
                r
            ).expect(REGISTERED),
            nats_latency: histogram_vec!(
                "ringstore_nats_request_duration_seconds",
                "NATS request latency by op, role and outcome",
                &["op", "role", "outcome"],
                BUCKETS.to_vec(),
                r
            ).expect(REGISTERED),
            applied: gauge_vec!(
                "ringstore_partition_applied_sequence",
                "Last log sequence a dbnode applied, as it last answered",
                by_copy,
                r
            ).expect(REGISTERED),
            lag: gauge_vec!(
                "ringstore_partition_replication_lag",
                "Log entries a dbnode has not applied yet, as it last answered",
                by_copy,
                r
            ).expect(REGISTERED),
            heartbeat_age: gauge_vec!(
                "ringstore_node_heartbeat_age_ms",
                "Milliseconds since a dbnode last answered this gateway's ping",
                &["node"],
                r
            ).expect(REGISTERED),
            feeds_open: gauge!("ringstore_change_feeds_open", "Change feeds open now", r).expect(REGISTERED),
            feeds_ended: counter_vec!(
                "ringstore_change_feeds_ended_total",
                "Change feeds the gateway ended, by reason (slow-client, shutdown, log-unavailable)",
                &["reason"],
                r
            ).expect(REGISTERED),
            shed: counter!(
                "ringstore_http_requests_shed_total",
                "Requests answered 503 at once because MAX_CONCURRENT_REQUESTS were in progress \
                 (not counted in ringstore_http_requests_total)",
                r
            ).expect(REGISTERED),
            impossible: counter_vec!(
                "ringstore_impossible_answers_total",
                "dbnode answers claiming a log position the log does not have (ignored), by \
                 partition",
                &["partition"],
                r
            ).expect(REGISTERED),
            connections_open: gauge!(
                "ringstore_http_connections_open",
                "HTTP connections open now (TLS handshakes included)",
                r
            ).expect(REGISTERED),
            connections_refused: counter!(
                "ringstore_http_connections_refused_total",
                "Connections closed at accept because MAX_CONNECTIONS were open",
                r
            ).expect(REGISTERED),
            connections_closed: counter_vec!(
                "ringstore_http_connections_closed_total",
                "Connections the gateway closed, by reason (header-timeout, idle, \
                 write-timeout, aborted)",
                &["reason"],
                r
            ).expect(REGISTERED),
            registry,
        }
    }
}

impl Metrics {
    /// Counts an answer of partition `p`'s copies that claimed a log position beyond the log.
    pub fn impossible_answer(&self, p: protocol::PartitionId) {
        self.impossible.with_label_values(&[&p.to_string()]).inc();
    }

    /// Records one NATS request.
    pub fn observe_nats(&self, op: &str, role: &str, outcome: &str, started: Instant) {
        self.nats_latency
            .with_label_values(&[op, role, outcome])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a change feed as open until the guard is dropped.
    pub fn feed_opened(&self) -> OpenFeed {
        self.feeds_open.inc();
        OpenFeed(self.feeds_open.clone())
    }

    /// Counts a change feed the gateway ended.
    pub fn feed_ended(&self, reason: &str) {
        self.feeds_ended.with_label_values(&[reason]).inc();
    }

    /// Counts a request shed by the concurrency limit.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// Counts a connection as open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    /// Counts a connection refused at accept (`MAX_CONNECTIONS`).
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a connection the gateway closed, and why.
    pub(crate) fn connection_closed(&self, reason: &str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    /// Change feeds open now.
    pub fn feeds_open(&self) -> u64 {
        self.feeds_open.get().max(0) as u64
    }

    /// The upper bounds of the latency buckets, in milliseconds.
    pub fn latency_buckets_ms() -> Vec<f64> {
        BUCKETS.iter().map(|s| s * 1000.0).collect()
    }

    /// Requests and latencies since start, by route and method (statuses summed).
    pub fn traffic(&self) -> Vec<RouteTraffic> {
        use prometheus::core::Collector;
        let mut routes: Vec<RouteTraffic> = Vec::new();
        for family in self.http_latency.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let (route, method) = (label("route"), label("method"));
                let histogram = metric.get_histogram();
                let count = histogram.get_sample_count();
                let buckets: Vec<u64> = histogram
                    .get_bucket()
                    .iter()
                    .map(|b| b.cumulative_count())
                    .collect();
                let errors = if label("status").starts_with('5') {
                    count
                } else {
                    0
                };
                match routes
                    .iter_mut()
                    .find(|r| r.route == route && r.method == method)
                {
                    Some(seen) => {
                        seen.requests += count;
                        seen.server_errors += errors;
                        for (sum, n) in seen.latency_buckets.iter_mut().zip(&buckets) {
                            *sum += n;
                        }
                    }
                    None => routes.push(RouteTraffic {
                        route,
                        method,
                        requests: count,
                        server_errors: errors,
                        latency_buckets: buckets,
                    }),
                }
            }
        }
        routes.sort_by(|a, b| (&a.route, &a.method).cmp(&(&b.route, &b.method)));
        routes
    }

    /// Sets the replication gauges from the latest heartbeats.
    pub fn observe_presence(&self, nodes: &[(std::time::Duration, Presence)]) {
        for (age, presence) in nodes {
            let node = presence.node.to_string();
            self.heartbeat_age
                .with_label_values(&[node.as_str()])
                .set(age.as_millis() as i64);
            for part in &presence.partitions {
                let labels = [
                    node.as_str(),
                    &part.partition.to_string(),
                    part.role.as_str(),
                ];
                self.applied
                    .with_label_values(&labels)
                    .set(part.applied as i64);
                self.lag.with_label_values(&labels).set(part.lag as i64);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Middleware recording every HTTP request. Labels are borrowed, not formatted: this runs on
/// every request.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    // The method is a label: only the standard ones, so that made-up methods cannot grow the
    // registry (and the gateway's memory) without bound.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    };
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status();
    let labels = [route, method, status.as_str()];
    metrics.http_requests.with_label_values(&labels).inc();
    metrics
        .http_latency
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
