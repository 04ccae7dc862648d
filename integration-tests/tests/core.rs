//! Cluster scenarios for the core of docs/design.md, each against its own cluster of real
//! processes (nats-server, dbnodes, gateway): CRUD over HTTP with every status code, hostile
//! ids, concurrent partial updates, a dbnode killed with -9 or wiped, NATS restarted, and a
//! duplicate node id. Run `cargo build --workspace` first; `KEEP_CLUSTER=1` keeps the logs.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use integration_tests::{
    eventually, expect, expect_problem, send, user_path, Cluster, HttpReply, ReadFrom,
};
use protocol::partition::partition_of;
use protocol::{Op, PartitionId, Reply, Role, User};
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A valid record.
fn user(id: &str, name: &str, group: u32) -> Value {
    json!({ "id": id, "name": name, "email": "someone@example.com", "group": group })
}

/// 30 records with fixed ids, so the partition split is the same on every run.
fn thirty_records(prefix: &str) -> Vec<Value> {
    (0..30)
        .map(|i| user(&format!("{prefix}-{i:02}"), &format!("User {i}"), i))
        .collect()
}

async fn create_all(cluster: &Cluster, records: &[Value]) {
    for record in records {
        let created = expect(cluster.create(record).await, 201).await;
        assert_eq!(created.json(), *record);
    }
}

/// Every record reads back through the gateway exactly as written.
async fn assert_all_readable(cluster: &Cluster, records: &[Value]) {
    for record in records {
        let id = record["id"].as_str().expect("records have ids");
        assert_eq!(
            expect(cluster.get(id).await, 200).await.json(),
            *record,
            "record {id}"
        );
    }
}

fn ids_in_partition(records: &[Value], partition: u32, partitions: u32) -> Vec<Value> {
    records
        .iter()
        .filter(|r| partition_of(r["id"].as_str().unwrap(), partitions) == partition)
        .cloned()
        .collect()
}

/// Asks one dbnode copy directly over NATS (`ringstore.part.{p}.{role}.get`, through the
/// harness's [`integration_tests::CopyReader`]) for each record, and asserts it holds exactly
/// that record.
async fn assert_copy_holds(cluster: &Cluster, p: PartitionId, role: Role, records: &[Value]) {
    let copy = cluster.copy(p, role).await;
    for record in records {
        let expected: User = serde_json::from_value(record.clone()).unwrap();
        match copy.get(&expected.id).await {
            Ok(Reply::User(found)) => assert_eq!(found.user, expected, "{}", copy.subject(Op::Get)),
            other => panic!("{} for {:?}: {other:?}", copy.subject(Op::Get), expected.id),
        }
    }
}

#[tokio::test]
async fn crud_over_http_with_every_status_code() {
    let cluster = Cluster::start(3).await;

    eprintln!("== phase: create");
    let john = user("13AE742", "John Doe", 3);
    let created = expect(cluster.create(&john).await, 201).await;
    assert_eq!(created.json(), john);
    assert!(created.header("location").ends_with("/api/user/13AE742"));
    let v1 = created.etag();

    eprintln!("== phase: create the same id again");
    expect_problem(cluster.create(&user("13AE742", "Other", 1)).await, 409).await;

    eprintln!("== phase: get");
    let got = expect(cluster.get("13AE742").await, 200).await;
    assert_eq!(got.json(), john);
    assert_eq!(got.etag(), v1);

    eprintln!("== phase: partial updates change only the given fields");
    let r = expect(
        cluster.put(&json!({"id": "13AE742", "group": 4})).await,
        200,
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"id": "13AE742", "name": "John Doe", "email": "someone@example.com", "group": 4})
    );
    assert!(r.etag() > v1, "the version grows with each write");
    let slash = cluster
        .request(Method::PUT, "/api/user/")
        .json(&json!({"id": "13AE742", "name": "Jane"}));
    let r = expect(slash.send().await.unwrap(), 200).await;
    assert_eq!(
        r.json(),
        json!({"id": "13AE742", "name": "Jane", "email": "someone@example.com", "group": 4})
    );
    let patch = json!({"email": "jane@example.com"});
    let r = expect(cluster.patch("13AE742", &patch).await, 200).await;
    assert_eq!(
        r.json(),
        json!({"id": "13AE742", "name": "Jane", "email": "jane@example.com", "group": 4})
    );
    let r = expect(cluster.put_id("13AE742", &json!({"group": 7})).await, 200).await;
    let jane = json!({"id": "13AE742", "name": "Jane", "email": "jane@example.com", "group": 7});
    assert_eq!(r.json(), jane);
    let current = expect(cluster.get("13AE742").await, 200).await;
    assert_eq!(current.json(), jane);
    assert_eq!(current.etag(), r.etag());

    eprintln!("== phase: If-Match");
    let stale = cluster
        .request(Method::PUT, "/api/user")
        .header(IF_MATCH, format!("\"{v1}\""))
        .json(&json!({"id": "13AE742", "group": 8}));
    expect_problem(stale.send().await.unwrap(), 412).await;
    assert_eq!(
        expect(cluster.get("13AE742").await, 200).await.json(),
        jane,
        "412 wrote nothing"
    );
    let fresh = cluster
        .request(Method::PUT, "/api/user")
        .header(IF_MATCH, current.header("etag"))
        .json(&json!({"id": "13AE742", "group": 8}));
    let r = expect(fresh.send().await.unwrap(), 200).await;
    assert_eq!(r.json()["group"], 8);
    let stale_delete = cluster
        .request(Method::DELETE, &user_path("13AE742"))
        .header(IF_MATCH, format!("\"{v1}\""));
    expect_problem(stale_delete.send().await.unwrap(), 412).await;

    eprintln!("== phase: delete");
    expect(cluster.delete("13AE742").await, 204).await;
    expect_problem(cluster.get("13AE742").await, 404).await;
    expect_problem(cluster.delete("13AE742").await, 404).await;

    eprintln!("== phase: create without an id gets a UUID");
    let body = json!({"name": "No Id", "email": "noid@example.com", "group": 0});
    let created = expect(cluster.create(&body).await, 201).await;
    let id = created.json()["id"]
        .as_str()
        .expect("the gateway returns the id")
        .to_owned();
    let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|_| panic!("{id:?} is not a UUID"));
    assert_eq!(uuid.get_version_num(), 4);
    assert!(created.header("location").ends_with(&user_path(&id)));
    assert_eq!(
        expect(cluster.get(&id).await, 200).await.json()["name"],
        "No Id"
    );

    eprintln!("== phase: invalid bodies are 400 problem+json naming the fields");
    let bad = json!({"id": "bad-email", "name": "X", "email": "not-an-email", "group": 1});
    let problem = expect_problem(cluster.create(&bad).await, 400).await;
    assert!(
        problem.to_string().contains("email"),
        "names the field: {problem}"
    );
    let lists_fields = problem.as_object().unwrap().values().any(Value::is_array);
    assert!(lists_fields, "a list of offending fields: {problem}");
    expect_problem(cluster.get("bad-email").await, 404).await;
    let bad =
        json!({"id": "bad-two", "name": "", "email": "a@example.com", "group": 2147483648u64});
    let problem = expect_problem(cluster.create(&bad).await, 400)
        .await
        .to_string();
    assert!(
        problem.contains("name") && problem.contains("group"),
        "{problem}"
    );
    let unknown =
        json!({"id": "x1", "name": "X", "email": "x@example.com", "group": 1, "admin": true});
    let problem = expect_problem(cluster.create(&unknown).await, 400).await;
    assert!(problem.to_string().contains("admin"), "{problem}");
    expect_problem(cluster.get("x1").await, 404).await;
    let malformed = cluster
        .request(Method::POST, "/api/user")
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"id": "m1", "name": "#);
    expect_problem(malformed.send().await.unwrap(), 400).await;
    let wrong_type = cluster
        .request(Method::POST, "/api/user")
        .header(CONTENT_TYPE, "text/plain")
        .body(user("t1", "T", 1).to_string());
    expect_problem(wrong_type.send().await.unwrap(), 415).await;
    let huge = user("huge", &"x".repeat(70 * 1024), 1).to_string();
    let too_big = cluster
        .request(Method::POST, "/api/user")
        .header(CONTENT_TYPE, "application/json")
        .body(huge);
    expect_problem(too_big.send().await.unwrap(), 413).await;
}

#[tokio::test]
async fn hostile_ids_round_trip_and_never_reach_a_subject_raw() {
    let cluster = Cluster::start(3).await;
    let ids = ["a.b", "a*b", "a>b", "$SRV.PING", "with space", "üñí€"];
    let sniffer = cluster.nats_client().await;
    let mut seen = sniffer.subscribe(">").await.unwrap();

    for id in ids {
        eprintln!("== phase: round trip of {id:?}");
        let created = expect(cluster.create(&user(id, "Hostile", 1)).await, 201).await;
        assert_eq!(created.json()["id"], id);
        assert!(created.header("location").ends_with(&user_path(id)));
        assert_eq!(
            expect(cluster.get(id).await, 200).await.json(),
            user(id, "Hostile", 1)
        );
        let r = expect(cluster.put_id(id, &json!({"name": "Renamed"})).await, 200).await;
        assert_eq!(r.json(), user(id, "Renamed", 1));
        let r = expect(cluster.put(&json!({"id": id, "group": 9})).await, 200).await;
        assert_eq!(r.json(), user(id, "Renamed", 9));
        let r = expect(cluster.patch(id, &json!({"group": 10})).await, 200).await;
        assert_eq!(r.json(), user(id, "Renamed", 10));
        assert_eq!(
            expect(cluster.get(id).await, 200).await.json(),
            user(id, "Renamed", 10)
        );
        expect(cluster.delete(id).await, 204).await;
        expect_problem(cluster.get(id).await, 404).await;
    }

    eprintln!("== phase: no ringstore subject carried a raw id");
    // Everything published before the marker reached the sniffer before the marker did.
    let marker = format!("harness.marker.{}", uuid::Uuid::new_v4().simple());
    sniffer.publish(marker.clone(), "".into()).await.unwrap();
    sniffer.flush().await.unwrap();
    let mut subjects_seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .expect("the marker arrives")
            .expect("the subscription stays open");
        if msg.subject.as_str() == marker {
            break;
        }
        subjects_seen.push(msg.subject.to_string());
    }
    let ringstore: Vec<&String> = subjects_seen
        .iter()
        .filter(|s| s.starts_with("ringstore."))
        .collect();
    assert!(
        !ringstore.is_empty(),
        "the sniffer saw the cluster's traffic"
    );
    for subject in ringstore {
        let clean = subject.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        });
        assert!(
            clean,
            "subject {subject:?} carries something other than encoded tokens"
        );
    }
}

#[tokio::test]
async fn concurrent_partial_updates_are_all_applied_once() {
    let cluster = Cluster::builder()
        .request_timeout(Duration::from_secs(5))
        .start()
        .await;

    eprintln!("== phase: create the record");
    let created = expect(cluster.create(&user("hot", "Hot", 0)).await, 201).await;
    let v0 = created.etag();

    eprintln!("== phase: 100 concurrent partial updates");
    let updates = (0..100u32).map(|i| {
        let body = if i % 2 == 0 {
            json!({"id": "hot", "group": i})
        } else {
            json!({"id": "hot", "name": format!("n{i}")})
        };
        let cluster = &cluster;
        async move {
            (
                i,
                HttpReply::read("PUT /api/user", cluster.put(&body).await).await,
            )
        }
    });
    let replies = futures::future::join_all(updates).await;

    eprintln!("== phase: every update applied exactly once, in one order");
    let mut versions = HashSet::new();
    let (mut last_group, mut last_name) = ((0, 0), (0, String::new()));
    for (i, reply) in &replies {
        assert_eq!(reply.status, StatusCode::OK, "update {i}: {}", reply.text);
        let (version, body) = (reply.etag(), reply.json());
        assert!(
            versions.insert(version),
            "update {i} reused version {version}"
        );
        if i % 2 == 0 {
            assert_eq!(body["group"], *i, "update {i} answers its own change");
            last_group = last_group.max((version, *i));
        } else {
            assert_eq!(
                body["name"],
                format!("n{i}"),
                "update {i} answers its own change"
            );
            last_name = last_name.max((version, format!("n{i}")));
        }
    }
    let expected: HashSet<u64> = (v0 + 1..=v0 + 100).collect();
    assert_eq!(
        versions,
        expected,
        "100 writes, versions {} to {}",
        v0 + 1,
        v0 + 100
    );
    let last = expect(cluster.get("hot").await, 200).await;
    assert_eq!(last.etag(), v0 + 100);
    let record = last.json();
    assert_eq!(
        record["group"], last_group.1,
        "the group of the last group update wins"
    );
    assert_eq!(
        record["name"], last_name.1,
        "the name of the last name update wins"
    );
}

#[tokio::test]
async fn a_dbnode_killed_with_9_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::builder()
        .read_from(ReadFrom::Primary)
        .start()
        .await;
    let records = thirty_records("k9");
    let in_p1 = ids_in_partition(&records, 1, 3);
    assert!(
        !in_p1.is_empty(),
        "some of the 30 records live in partition 1"
    );

    eprintln!(
        "== phase: write 30 records ({} in db-1's partition 1)",
        in_p1.len()
    );
    create_all(&cluster, &records).await;

    eprintln!("== phase: kill -9 db-1");
    cluster.node(1).kill9();
    assert!(!cluster.node(1).is_running());

    eprintln!("== phase: restart db-1 on the same data dir");
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;

    eprintln!("== phase: every acknowledged record is readable (READ_FROM=primary)");
    assert_all_readable(&cluster, &records).await;

    eprintln!("== phase: db-1's own primary copy of partition 1 holds them");
    assert_copy_holds(&cluster, 1, Role::Primary, &in_p1).await;
}

#[tokio::test]
async fn a_dbnode_with_a_wiped_disk_rebuilds_from_the_log() {
    let mut cluster = Cluster::builder()
        .read_from(ReadFrom::Primary)
        .start()
        .await;
    let records = thirty_records("wipe");
    let (in_p0, in_p1) = (
        ids_in_partition(&records, 0, 3),
        ids_in_partition(&records, 1, 3),
    );
    assert!(!in_p0.is_empty() && !in_p1.is_empty());

    eprintln!("== phase: write 30 records");
    create_all(&cluster, &records).await;

    eprintln!("== phase: stop db-1 gracefully and wipe its data dir");
    let status = cluster.node(1).terminate().await;
    assert!(status.success(), "db-1 exits cleanly on SIGTERM: {status}");
    cluster.node(1).wipe();
    assert!(!cluster.node(1).data_dir().exists());

    eprintln!("== phase: restart db-1 with an empty disk");
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;

    eprintln!("== phase: everything is readable (READ_FROM=primary)");
    assert_all_readable(&cluster, &records).await;

    eprintln!("== phase: db-1 rebuilt its primary copy of P1 and its replica of P0");
    assert_copy_holds(&cluster, 1, Role::Primary, &in_p1).await;
    assert_copy_holds(&cluster, 0, Role::Replica, &in_p0).await;
}

#[tokio::test]
async fn a_wiped_copy_rebuilt_across_several_batches_of_a_log_with_holes_is_whole() {
    // 200 records of P1 created, then each updated: the log's first 200 sequences are gone
    // (superseded), and a copy rebuilt from it reads 200 entries after a hole of 200 in
    // batches of 256 — the hole opens in one batch and is closed by another, on the word of
    // the log's leader (docs/design.md "Replication").
    let mut cluster = Cluster::builder()
        .read_from(ReadFrom::Primary)
        .start()
        .await;
    let mut ids = (0..)
        .map(|n| format!("hole-{n:04}"))
        .filter(|id| partition_of(id, 3) == 1);
    let records: Vec<Value> = (&mut ids)
        .take(200)
        .map(|id| user(&id, "first", 1))
        .collect();
    create_all(&cluster, &records).await;
    let mut updated = Vec::new();
    for record in &records {
        let id = record["id"].as_str().unwrap();
        let body = json!({"name": "second"});
        let reply = expect(cluster.put_id(id, &body).await, 200).await;
        updated.push(reply.json());
    }
    // 100 more creates past the batch boundary, so that the hole spans two batches.
    let tail: Vec<Value> = ids.take(100).map(|id| user(&id, "tail", 2)).collect();
    create_all(&cluster, &tail).await;
    updated.extend(tail);

    eprintln!("== phase: wipe db-1 (primary of P1) and rebuild it from the log");
    assert!(cluster.node(1).terminate().await.success());
    cluster.node(1).wipe();
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;
    assert_copy_holds(&cluster, 1, Role::Primary, &updated).await;
    assert_all_readable(&cluster, &updated).await;
}

#[tokio::test]
async fn the_cluster_recovers_when_nats_restarts() {
    let mut cluster = Cluster::start(3).await;
    let records: Vec<Value> = thirty_records("nats").into_iter().take(10).collect();

    eprintln!("== phase: write 10 records");
    create_all(&cluster, &records).await;

    eprintln!("== phase: kill -9 NATS and start it again on the same port and store");
    cluster.nats().kill();
    cluster.nats().restart().await;

    eprintln!("== phase: reads and writes succeed again within 10 s");
    let cluster = &cluster;
    // Until every node has subscribed its endpoints again (one subscription per op), a call
    // may find no responder and get a correct 503 + Retry-After; /ready probes them all.
    eventually(Duration::from_secs(10), || async {
        let r = cluster.request(Method::GET, "/ready").send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let first = records[0]["id"].as_str().unwrap();
    eventually(Duration::from_secs(10), || async {
        let r = cluster
            .request(Method::GET, &user_path(first))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let mut attempt = 0;
    let id = eventually(Duration::from_secs(10), || {
        attempt += 1;
        let id = format!("after-restart-{attempt}");
        async move {
            let r = cluster
                .request(Method::POST, "/api/user")
                .json(&user(&id, "After", 1));
            (r.send().await.ok()?.status() == StatusCode::CREATED).then_some(id)
        }
    })
    .await;
    assert_eq!(
        expect(cluster.get(&id).await, 200).await.json(),
        user(&id, "After", 1)
    );

    eprintln!("== phase: every record written before the restart is still there");
    assert_all_readable(cluster, &records).await;
}

#[tokio::test]
async fn a_second_process_with_a_live_node_id_refuses_to_serve() {
    let mut cluster = Cluster::builder().without_gateway().start().await;
    let first = cluster.wait_node_ready(0).await;

    eprintln!("== phase: start a second db-0 (own data dir) while db-0 is live");
    let mut duplicate = cluster.spawn_dbnode(0, "db-0-duplicate");
    let status = duplicate
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the duplicate db-0 exits within 10 s");
    assert!(!status.success(), "the duplicate exits non-zero: {status}");

    eprintln!("== phase: the first db-0 keeps serving");
    assert!(cluster.node(0).is_running());
    let still = cluster.wait_node_ready(0).await;
    assert_eq!(
        still.instance, first.instance,
        "the same process still announces db-0"
    );

    eprintln!("== phase: control: once db-0 is gone, the same command serves");
    assert!(cluster.node(0).terminate().await.success());
    duplicate.start();
    let replacement = cluster.wait_node_ready(0).await;
    assert_ne!(replacement.instance, first.instance);
    assert!(duplicate.is_running());
}

#[tokio::test]
async fn a_retried_create_is_recognised_even_by_a_copy_that_never_saw_it() {
    let mut cluster = Cluster::start(3).await;
    let id = (0..)
        .map(|i| format!("retried-{i}"))
        .find(|id| partition_of(id, 3) == 1)
        .unwrap();
    let create = |cluster: &Cluster, key: &str| {
        cluster
            .request(Method::POST, "/api/user")
            .header("Idempotency-Key", key)
            .json(&user(&id, "Retried", 1))
    };

    eprintln!("== phase: stop db-2 (P1's replica) and wipe its disk");
    cluster.node(2).terminate().await;
    cluster.node(2).wipe();

    eprintln!("== phase: create {id} with key K, then update it: the log keeps only the update");
    let first = expect(send("first create", create(&cluster, "K")).await, 201).await;
    let updated = cluster.put(&json!({"id": id, "group": 9})).await;
    expect(updated, 200).await;

    eprintln!("== phase: db-2 rebuilds from the compacted log; then db-1 dies");
    cluster.node(2).start();
    cluster.wait_node_ready(2).await;
    cluster.node(1).kill9();

    eprintln!("== phase: the client retries the create with K: db-2 answers its first outcome");
    let end = cluster.log_end(1).await;
    let retried = expect(send("retried create", create(&cluster, "K")).await, 201).await;
    assert_eq!(
        retried.json()["group"],
        1,
        "the created record, as first answered"
    );
    assert_eq!(retried.etag(), first.etag(), "the create's version");
    assert_eq!(
        cluster.log_end(1).await,
        end,
        "nothing was appended for the retry"
    );

    eprintln!("== phase: a create with another key is a real conflict");
    expect_problem(
        send("conflicting create", create(&cluster, "other")).await,
        409,
    )
    .await;
}

#[tokio::test]
async fn an_undecodable_log_entry_stalls_neither_writes_nor_a_catch_up() {
    let mut cluster = Cluster::start(3).await;
    let ids: Vec<String> = (0..)
        .map(|i| format!("after-garbage-{i}"))
        .filter(|id| partition_of(id, 3) == 1)
        .take(3)
        .collect();

    eprintln!("== phase: an operator's stray message lands in P1's log");
    let js = async_nats::jetstream::new(cluster.nats_client().await);
    let ack = js
        .publish("ringstore.log.1.6e6f6973", "not a log entry".into())
        .await
        .expect("published");
    ack.await.expect("stored in RINGSTORE_P1");

    eprintln!("== phase: writes to P1 still succeed");
    expect(cluster.create(&user(&ids[0], "After", 1)).await, 201).await;

    eprintln!("== phase: db-2 (P1's replica) restarts and catches up past it");
    cluster.node(2).terminate().await;
    expect(cluster.create(&user(&ids[1], "After", 1)).await, 201).await;
    cluster.node(2).start();
    cluster.wait_node_ready(2).await;
    let copy = cluster.copy(1, Role::Replica).await;
    for id in &ids[..2] {
        match copy.get(id).await {
            Ok(Reply::User(found)) => assert_eq!(&found.user.id, id),
            other => panic!("db-2's copy of P1 lacks {id}: {other:?}"),
        }
    }
    expect(cluster.create(&user(&ids[2], "After", 1)).await, 201).await;
}
