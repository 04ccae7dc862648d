//! Rings of any size: 1, 2, 3 and 5 dbnodes over 12 partitions (more partitions than nodes),
//! against real processes (docs/design.md "The partition map"). Each ring is provisioned with
//! its own first map and its own rendered nats.conf; every node holds exactly what the map
//! gives it; every record written is read back, LIST walks each exactly once and COUNT is
//! exact; with two nodes or more, a node killed with -9 loses nothing and stops nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{eventually, Cluster};
use protocol::{PartitionMap, Role};
use reqwest::Method;
use serde_json::{json, Value};

const PARTITIONS: u32 = 12;

/// `per_partition` ids in each partition of `map`.
fn ids(map: &PartitionMap, prefix: &str, per_partition: usize) -> Vec<String> {
    let mut counts = vec![0; map.count() as usize];
    let mut ids = Vec::new();
    for n in 0.. {
        if counts.iter().all(|&c| c == per_partition) {
            break;
        }
        let id = format!("{prefix}-{n}");
        let slot = &mut counts[map.partition_of(&id) as usize];
        if *slot < per_partition {
            *slot += 1;
            ids.push(id);
        }
    }
    ids
}

fn user(id: &str, name: &str) -> Value {
    json!({ "id": id, "name": name, "email": "someone@example.com", "group": 1 })
}

async fn status(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// Every id LIST returns, walking pages of 7; panics on a repeated id.
async fn list_all(cluster: &Cluster) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "7".to_owned())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let request = cluster.request(Method::GET, "/api/users").query(&query);
        let (code, page) = status(request.send().await.expect("LIST")).await;
        assert_eq!(code, 200, "LIST: {page}");
        for item in page["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("an id").to_owned();
            assert!(seen.insert(id.clone()), "LIST returned {id} twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
}

async fn count(cluster: &Cluster) -> u64 {
    let request = cluster.request(Method::GET, "/api/users/count");
    let (code, body) = status(request.send().await.expect("COUNT")).await;
    assert_eq!(code, 200, "COUNT: {body}");
    body["count"].as_u64().expect("a count")
}

/// Each node announces exactly the partitions and roles the map gives it, and
/// `/api/cluster` shows the map's primary and replica of every partition.
async fn holds_what_the_map_says(cluster: &Cluster) {
    let map = cluster.map().clone();
    for &node in map.nodes() {
        let presence = cluster.wait_node_ready(node.0).await;
        let mut announced: Vec<_> = presence
            .partitions
            .iter()
            .map(|c| (c.partition, c.role))
            .collect();
        let mut given = map.hosted(node);
        announced.sort_by_key(|&(p, r)| (p, r == Role::Replica));
        given.sort_by_key(|&(p, r)| (p, r == Role::Replica));
        assert_eq!(announced, given, "{node} holds what the map gives it");
    }
    let view: Value = cluster
        .request(Method::GET, "/api/cluster")
        .send()
        .await
        .expect("/api/cluster")
        .json()
        .await
        .expect("JSON");
    let partitions = view["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), map.count() as usize, "{view}");
    for p in map.all() {
        let shown = &partitions[p as usize];
        assert_eq!(shown["primary"], json!(map.primary(p).to_string()), "P{p}");
        assert_eq!(
            shown["replica"],
            json!(map.replica(p).map(|n| n.to_string())),
            "P{p}"
        );
    }
}

/// Writes records in every partition (creates, an update and a delete in each), reads them
/// back, walks LIST, checks COUNT; returns the ids that should exist with their names.
async fn write_everywhere(cluster: &Cluster, prefix: &str) -> Vec<(String, String)> {
    let map = cluster.map().clone();
    let ids = ids(&map, prefix, 3);
    for id in &ids {
        let (code, body) = status(cluster.create(&user(id, "first")).await).await;
        assert_eq!(code, 201, "create {id} (P{}): {body}", map.partition_of(id));
    }
    let mut live = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match i % 3 {
            0 => {
                let (code, body) =
                    status(cluster.put_id(id, &json!({"name": "second"})).await).await;
                assert_eq!(code, 200, "update {id}: {body}");
                live.push((id.clone(), "second".to_owned()));
            }
            1 => {
                let (code, _) = status(cluster.delete(id).await).await;
                assert_eq!(code, 204, "delete {id}");
            }
            _ => live.push((id.clone(), "first".to_owned())),
        }
    }
    live
}

async fn reads_back(cluster: &Cluster, live: &[(String, String)]) {
    for (id, name) in live {
        let (code, body) = status(cluster.get(id).await).await;
        assert_eq!(code, 200, "GET {id}: {body}");
        assert_eq!(body["name"], json!(name), "GET {id}");
    }
}

async fn ring_of(nodes: u32) {
    let mut cluster = Cluster::builder()
        .nodes(nodes)
        .partitions(PARTITIONS)
        .start()
        .await;
    assert_eq!(cluster.map().nodes().len(), nodes as usize);
    holds_what_the_map_says(&cluster).await;

    let mut live = write_everywhere(&cluster, "ring").await;
    reads_back(&cluster, &live).await;
    let expected: BTreeSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        list_all(&cluster).await,
        expected,
        "LIST walks every record once"
    );
    assert_eq!(
        count(&cluster).await,
        expected.len() as u64,
        "COUNT is exact"
    );

    if nodes < 2 {
        return;
    }
    // The seed's promise, for any ring: losing any one node loses no data and stops no
    // operation. db-1 holds a share of primaries and the replicas of db-0's.
    let victim = 1;
    eprintln!("== kill -9 db-{victim} of {nodes}");
    cluster.node(victim).kill9();
    let during = eventually(Duration::from_secs(20), || async {
        let (code, _) = status(cluster.create(&user("probe-during", "x")).await).await;
        (code == 201 || code == 409).then_some(())
    });
    during.await;
    reads_back(&cluster, &live).await;
    live.extend(write_everywhere(&cluster, "down").await);
    reads_back(&cluster, &live).await;

    eprintln!("== db-{victim} restarts and catches up");
    cluster.node(victim).start();
    cluster.wait_node_ready(victim).await;
    reads_back(&cluster, &live).await;
    let mut expected: BTreeSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
    expected.insert("probe-during".to_owned());
    assert_eq!(list_all(&cluster).await, expected);
    assert_eq!(count(&cluster).await, expected.len() as u64);
    holds_what_the_map_says(&cluster).await;
}

#[tokio::test]
async fn one_node_holds_all_twelve_partitions() {
    ring_of(1).await;
}

#[tokio::test]
async fn two_nodes_over_twelve_partitions_survive_a_kill() {
    ring_of(2).await;
}

#[tokio::test]
async fn three_nodes_over_twelve_partitions_survive_a_kill() {
    ring_of(3).await;
}

#[tokio::test]
async fn five_nodes_over_twelve_partitions_survive_a_kill() {
    ring_of(5).await;
}
