//! The operator's CLI, `ringstore`, against real processes (3 dbnodes over 12 partitions):
//! `status` tells a healthy ring from one with a node down (exit 0 / 1, tables and JSON), and
//! `log tail` shows a record's entries as the gateway acknowledged them, and flags an entry no
//! ringstore writer made.

use std::time::Duration;

use integration_tests::{etag, eventually, Cluster};
use protocol::subjects;
use serde_json::{json, Value};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn user(id: &str, name: &str) -> Value {
    json!({ "id": id, "name": name, "email": "ops@example.com", "group": 2 })
}

/// `ringstore --json log tail --id {id}`: one JSON row per entry.
async fn tail_rows(cluster: &Cluster, id: &str) -> Vec<Value> {
    let output = cluster
        .ringstore(&["--json", "log", "tail", "--id", id])
        .await;
    assert_eq!(output.status.code(), Some(0));
    stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON row per line"))
        .collect()
}

async fn three_over_twelve() -> Cluster {
    Cluster::builder().nodes(3).partitions(12).start().await
}

#[tokio::test]
async fn status_is_ok_on_a_ready_ring_and_names_the_problem_when_a_node_is_down() {
    let mut cluster = three_over_twelve().await;
    let healthy = cluster.ringstore(&["status"]).await;
    assert_eq!(healthy.status.code(), Some(0), "a ready ring is OK");
    let table = stdout(&healthy);
    assert!(table.contains("12 partitions over 3 nodes"), "{table}");
    assert!(table.contains("OK: every partition"), "{table}");

    let json = cluster.ringstore(&["--json", "status"]).await;
    assert_eq!(json.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    let partitions = status["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 12);
    for p in partitions {
        let copies = p["copies"].as_array().expect("copies");
        assert_eq!(copies.len(), 2, "{p}");
        assert!(copies.iter().all(|c| c["ready"] == json!(true)), "{p}");
    }
    assert_eq!(status["problems"], json!([]));

    cluster.node(1).kill9();
    // The node is gone as soon as it stops answering its ping: the next status sees it.
    let down = cluster.ringstore(&["--json", "status"]).await;
    assert_eq!(down.status.code(), Some(1), "a node down is a problem");
    let status: Value = serde_json::from_slice(&down.stdout).expect("JSON");
    let problems: Vec<String> = status["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p == "db-1 does not answer its ping"),
        "{problems:?}"
    );
    // db-1 is primary of P1 P4 P7 P10 and replica of P0 P3 P6 P9: 8 copies down.
    let copies_down = problems
        .iter()
        .filter(|p| p.contains("on db-1 is not ready"))
        .count();
    assert_eq!(copies_down, 8, "{problems:?}");

    cluster.node(1).start();
    cluster.wait_node_ready(1).await;
    eventually(Duration::from_secs(20), || async {
        let again = cluster.ringstore(&["status"]).await;
        (again.status.code() == Some(0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn log_tail_shows_a_records_history_and_flags_a_forged_entry() {
    let cluster = three_over_twelve().await;

    let created = cluster.create(&user("ops-1", "first")).await;
    assert_eq!(created.status(), 201);
    let v1 = etag(&created);
    let tail = tail_rows(&cluster, "ops-1").await;
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert_eq!(tail[0]["op"], json!("create"));
    assert_eq!(tail[0]["version"], json!(v1), "the version is the ETag");
    assert_eq!(tail[0]["id"], json!("ops-1"));
    assert_eq!(
        tail[0]["partition"],
        json!(cluster.map().partition_of("ops-1"))
    );

    // The log keeps a record's latest entry only.
    let updated = cluster.put_id("ops-1", &json!({"name": "second"})).await;
    assert_eq!(updated.status(), 200);
    let tail = tail_rows(&cluster, "ops-1").await;
    assert_eq!(tail.len(), 1, "{tail:?}");
    assert_eq!(tail[0]["op"], json!("update"));
    assert_eq!(tail[0]["version"], json!(etag(&updated)));

    assert_eq!(cluster.delete("ops-1").await.status(), 204);
    let tail = tail_rows(&cluster, "ops-1").await;
    assert_eq!(tail[0]["op"], json!("delete"));
    assert_eq!(tail[0]["version"], Value::Null);
    assert!(tail.iter().all(|r| r["suspect"].is_null()), "{tail:?}");

    // An entry no ringstore writer made (the operator's identity may write anything): the
    // tail shows it, marked.
    let client = cluster.nats_client().await;
    let p = cluster.map().partition_of("ops-3");
    let forged = json!({"id": "someone-else", "record": null, "writer": "db-0", "request_id": "x"});
    let js = async_nats::jetstream::new(client);
    js.publish(subjects::log_subject(p, "ops-3"), forged.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let tail = cluster.ringstore(&["log", "tail", "--id", "ops-3"]).await;
    assert_eq!(tail.status.code(), Some(0));
    assert!(stdout(&tail).contains("SUSPECT"), "{}", stdout(&tail));
}

#[tokio::test]
async fn status_on_a_nats_cluster_names_each_logs_leader_and_replicas() {
    let cluster = Cluster::builder()
        .nodes(3)
        .partitions(12)
        .nats_servers(3)
        .start()
        .await;
    let output = eventually(Duration::from_secs(20), || async {
        let output = cluster.ringstore(&["--json", "status"]).await;
        (output.status.code() == Some(0)).then_some(output)
    })
    .await;
    let status: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for p in status["partitions"].as_array().expect("partitions") {
        let log = &p["log"];
        assert_eq!(log["clustered"], json!(true), "{p}");
        let leader = log["leader"].as_str().expect("a leader");
        assert!(leader.starts_with("nats-"), "{p}");
        let replicas = log["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 2, "R3: two servers besides the leader: {p}");
    }
}

/// Overwrites the stored record `id` of partition `p` in the RocksDB at `data_dir` (its node
/// stopped) with one whose name is `name`, as a bit flip or a faulty apply would leave it.
fn corrupt(data_dir: &std::path::Path, p: u32, id: &str, name: &str) {
    let opts = rocksdb::Options::default();
    let families = rocksdb::DB::list_cf(&opts, data_dir).expect("the copy's column families");
    let db = rocksdb::DB::open_cf(&opts, data_dir, &families).expect("the copy's RocksDB");
    let cf = db
        .cf_handle(&format!("p{p}"))
        .expect("the partition's column family");
    let key = [b"r".as_slice(), id.as_bytes()].concat();
    let stored = db
        .get_cf(cf, &key)
        .expect("read")
        .expect("the record is stored");
    let mut value: Value = serde_json::from_slice(&stored).expect("a stored record is JSON");
    value["user"]["name"] = json!(name);
    db.put_cf(cf, &key, serde_json::to_vec(&value).unwrap())
        .expect("write");
}

#[tokio::test]
async fn verify_finds_the_one_record_a_copy_holds_wrong() {
    let mut cluster = three_over_twelve().await;
    let ids: Vec<String> = (0..36).map(|i| format!("v-{i}")).collect();
    for id in &ids {
        assert_eq!(cluster.create(&user(id, "right")).await.status(), 201);
    }
    let clean = cluster.ringstore(&["verify"]).await;
    assert_eq!(clean.status.code(), Some(0));
    assert!(
        stdout(&clean).contains("OK: 24 copies equal their logs"),
        "{}",
        stdout(&clean)
    );

    // A record db-1 is the replica of: flip its copy there, nowhere else.
    let map = cluster.map().clone();
    let victim = ids
        .iter()
        .find(|id| map.replica(map.partition_of(id)) == Some(protocol::NodeId(1)))
        .expect("db-1 holds replicas of a third of the ids")
        .clone();
    let p = map.partition_of(&victim);
    cluster.node(1).terminate().await;
    corrupt(cluster.node(1).data_dir(), p, &victim, "flipped");
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;

    let found = cluster.ringstore(&["--json", "verify"]).await;
    assert_eq!(
        found.status.code(),
        Some(1),
        "a differing copy is a problem"
    );
    let rows: Vec<Value> = stdout(&found)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON rows"))
        .collect();
    assert_eq!(rows.len(), 24);
    for row in &rows {
        let is_victim = row["partition"] == json!(p) && row["node"] == json!("db-1");
        let expected: Vec<Value> = if is_victim {
            vec![json!(victim)]
        } else {
            vec![]
        };
        assert_eq!(row["differing"], json!(expected), "{row}");
        assert_eq!(row["digest_log"] != row["digest_copy"], is_victim, "{row}");
    }
}

#[tokio::test]
async fn verify_under_a_write_load_finds_nothing_wrong() {
    let cluster = three_over_twelve().await;
    let ids: Vec<String> = (0..48).map(|i| format!("w-{i}")).collect();
    for id in &ids {
        assert_eq!(cluster.create(&user(id, "n-0")).await.status(), 201);
    }
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let (stop, rounds) = (AtomicBool::new(false), AtomicU32::new(0));
    let writes = async {
        while !stop.load(Ordering::Relaxed) {
            let name = format!("n-{}", rounds.load(Ordering::Relaxed) + 1);
            for id in &ids {
                let status = cluster.put_id(id, &json!({ "name": name })).await.status();
                assert_eq!(status, 200, "update {id}");
            }
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    };
    let checks = async {
        let (mut runs, mut changed) = (0, 0);
        // Until the writers have gone round three times while checks ran, and three checks.
        while runs < 3 || rounds.load(Ordering::Relaxed) < 3 {
            let run = cluster.ringstore(&["--json", "verify"]).await;
            assert_eq!(
                run.status.code(),
                Some(0),
                "no copy differs while writes go on"
            );
            for line in stdout(&run).lines() {
                let row: Value = serde_json::from_str(line).expect("JSON rows");
                changed += row["changed_during"].as_u64().unwrap_or(0);
            }
            runs += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (runs, changed)
    };
    let ((), (runs, changed)) = tokio::join!(writes, checks);
    eprintln!(
        "== {runs} checks during {} rounds of updates; {changed} records changed during them",
        rounds.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn check_perf_passes_on_a_healthy_ring_fails_below_its_bar_and_cleans_up() {
    let cluster = three_over_twelve().await;
    let args = [
        "--json",
        "check",
        "perf",
        "--seconds",
        "2",
        "--clients",
        "8",
    ];
    let run = cluster.ringstore(&args).await;
    assert_eq!(run.status.code(), Some(0), "a healthy ring passes");
    let verdict: Value = serde_json::from_slice(&run.stdout).expect("a JSON verdict");
    let writes = verdict["writes"].as_u64().expect("writes");
    assert!(writes > 0, "{verdict}");
    assert_eq!(verdict["reads_verified"], json!(writes), "{verdict}");
    assert_eq!(verdict["deleted"], json!(writes), "{verdict}");
    assert_eq!(verdict["pass"], json!(true));

    let impossible = [
        "check",
        "perf",
        "--seconds",
        "1",
        "--clients",
        "2",
        "--min-rate",
        "10000000",
    ];
    let run = cluster.ringstore(&impossible).await;
    assert_eq!(run.status.code(), Some(1), "below the bar fails");
    assert!(stdout(&run).contains("FAIL:"), "{}", stdout(&run));

    // The deletes went around the gateway, so its reads may see a copy a moment behind them.
    eventually(Duration::from_secs(10), || async {
        let count = cluster
            .request(reqwest::Method::GET, "/api/users/count")
            .send()
            .await
            .ok()?;
        let count: Value = count.json().await.ok()?;
        (count["count"] == json!(0)).then_some(())
    })
    .await;
}
