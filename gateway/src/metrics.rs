//! Prometheus metrics: HTTP requests and latency per route and status, NATS request latency
//! per op, role and outcome. Each gateway instance owns its registry.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "ringstore_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "ringstore_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let nats_latency = HistogramVec::new(
            HistogramOpts::new(
                "ringstore_nats_request_duration_seconds",
                "NATS request latency by op, role and outcome",
            )
            .buckets(BUCKETS.to_vec()),
            &["op", "role", "outcome"],
        )
        .expect("valid metric");
        let partition_gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["node", "partition", "role"])
                .expect("valid metric")
        };
        let applied = partition_gauge(
            "ringstore_partition_applied_sequence",
            "Last log sequence a dbnode applied, from its heartbeat",
        );
        let lag = partition_gauge(
            "ringstore_partition_replication_lag",
            "Log entries a dbnode has not applied yet, from its heartbeat",
        );
        let heartbeat_age = IntGaugeVec::new(
            Opts::new(
                "ringstore_node_heartbeat_age_ms",
                "Milliseconds since a dbnode's heartbeat",
            ),
            &["node"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_latency.clone()),
            Box::new(nats_latency.clone()),
            Box::new(applied.clone()),
            Box::new(lag.clone()),
            Box::new(heartbeat_age.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        Self {
            registry,
            http_requests,
            http_latency,
            nats_latency,
            applied,
            lag,
            heartbeat_age,
        }
    }
}

impl Metrics {
    /// Records one NATS request.
    pub fn observe_nats(&self, op: &str, role: &str, outcome: &str, started: Instant) {
        self.nats_latency
            .with_label_values(&[op, role, outcome])
            .observe(started.elapsed().as_secs_f64());
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
