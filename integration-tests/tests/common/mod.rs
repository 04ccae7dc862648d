//! Client-side machinery of the replication-ring scenarios (`ring.rs`): the gateway as a load
//! client sees it ([`Api`], [`writes::Write`] with its Idempotency-Key and one retry), what it
//! acknowledged ([`ledger::Ledger`]) checked against the gateway and against each copy, load
//! generators ([`load`]), and the gateway's own NATS request counters.

pub mod ledger;
pub mod load;
pub mod writes;

use integration_tests::{user_path, Cluster, HttpReply};
use protocol::partition::partition_of;
use protocol::PartitionId;
use serde_json::{json, Value};

/// Partitions (and dbnodes) in every scenario.
pub const PARTITIONS: u32 = 3;

/// A valid record.
pub fn user(id: &str, name: &str, group: u32) -> Value {
    json!({ "id": id, "name": name, "email": "someone@example.com", "group": group })
}

/// The partition of `id` in a ring of [`PARTITIONS`].
pub fn partition(id: &str) -> PartitionId {
    partition_of(id, PARTITIONS)
}

/// `per_partition` ids `{prefix}-{n}` in each partition: `ids[p]` all live in partition `p`.
pub fn ids_by_partition(prefix: &str, per_partition: usize) -> Vec<Vec<String>> {
    let mut ids = vec![Vec::new(); PARTITIONS as usize];
    let mut n = 0;
    while ids.iter().any(|p| p.len() < per_partition) {
        let id = format!("{prefix}-{n:04}");
        let slot = &mut ids[partition(&id) as usize];
        if slot.len() < per_partition {
            slot.push(id);
        }
        n += 1;
    }
    ids
}

/// The gateway's HTTP address, cloneable into load tasks while the test holds the cluster.
#[derive(Debug, Clone)]
pub struct Api {
    /// The harness's HTTP client (10 s timeout).
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Api {
    /// The gateway of `cluster`.
    pub fn of(cluster: &Cluster) -> Api {
        Api {
            http: cluster.http().clone(),
            base: cluster.base_url(),
        }
    }

    /// `GET /api/user/{id}`, read to the end; panics if no HTTP answer comes.
    pub async fn get(&self, id: &str) -> HttpReply {
        let url = format!("{}{}", self.base, user_path(id));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {id:?}: no HTTP answer: {e}"));
        HttpReply::read(&format!("GET {id:?}"), response).await
    }
}

/// True once the gateway counts `node` as live (ready, heard from within 3 s), in
/// `GET /api/cluster`; `None` otherwise, for [`integration_tests::eventually`].
pub async fn gateway_sees_live(api: &Api, node: &str) -> Option<()> {
    let url = format!("{}/api/cluster", api.base);
    let view: Value = api.http.get(url).send().await.ok()?.json().await.ok()?;
    let nodes = view["nodes"].as_array()?;
    let live = nodes
        .iter()
        .any(|n| n["node"] == node && n["live"] == Value::Bool(true));
    live.then_some(())
}

/// The gateway's count of reads (gets) that `role` copies answered, found or not.
pub async fn nats_reads(api: &Api, role: &str) -> u64 {
    nats_requests(api, "get", role, "ok").await + nats_requests(api, "get", role, "refused").await
}

/// The gateway's count of write requests (create, update, delete) to `role` that ended with
/// `outcome`.
pub async fn nats_writes(api: &Api, role: &str, outcome: &str) -> u64 {
    let mut total = 0;
    for op in ["create", "update", "delete"] {
        total += nats_requests(api, op, role, outcome).await;
    }
    total
}

/// The gateway's count of NATS requests for `op` to `role` that ended with `outcome`.
pub async fn nats_requests(api: &Api, op: &str, role: &str, outcome: &str) -> u64 {
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics body");
    let labels = format!("op=\"{op}\"");
    text.lines()
        .filter(|l| l.starts_with("ringstore_nats_request_duration_seconds_count{"))
        .filter(|l| {
            l.contains(&labels)
                && l.contains(&format!("role=\"{role}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
