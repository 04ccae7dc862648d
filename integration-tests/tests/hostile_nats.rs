//! NATS clients doing what ringstore's processes never would, with the production `nats.conf`:
//! - hostile writes to a dbnode are refused with an error reply naming the bad fields, nothing
//!   reaches the log, and the partition keeps serving;
//! - the gateway's identity, or one dbnode's, trying to make a responder or the NATS server
//!   itself publish into a log (requests whose reply subject is a log subject: `$SRV`,
//!   JetStream's own answers, direct gets of planted messages, a consumer delivering into
//!   another log): no log changes (docs/security.md, "Accounts");
//! - forged presence (through the server, or a node naming another in its heartbeat) stops no
//!   node and misleads no gateway;
//! - a copy answering with an impossible log position leaves no partition unreadable.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use integration_tests::{eventually, expect, metric_sample, send, Cluster};
use protocol::partition::partition_of;
use protocol::{subjects, NodeId, Op, ProtocolError, Response, Role};
use serde_json::{json, Value};
use tokio::time::Instant;

/// An id of partition `p` (of 3), with `prefix`.
fn id_in(p: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| partition_of(id, 3) == p)
        .unwrap()
}

fn user(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "email": "t@example.com", "group": 1})
}

/// A log's end and entry count, as the operator (admin) reads them.
async fn log_state(cluster: &Cluster, p: u32) -> (u64, u64) {
    let js = jetstream::new(cluster.nats_client().await);
    let mut stream = js.get_stream(subjects::stream_name(p)).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.last_sequence, info.state.messages)
}

/// Sends `payload` to `subject` with `reply` as its reply subject, as a client can.
async fn publish_with_reply(
    client: &async_nats::Client,
    subject: &str,
    reply: &str,
    payload: &str,
) {
    // A refusal of the server (a permissions violation) is what some of these should get;
    // either way nothing may land in a log.
    let _ = client
        .publish_with_reply(
            subject.to_owned(),
            reply.to_owned(),
            payload.to_owned().into(),
        )
        .await;
}

/// Gives the server and the dbnodes time to act on what was sent: once the server has taken
/// the hostile messages (a flush), a round trip through each dbnode's request subjects, which
/// every dbnode takes after them.
async fn settle(cluster: &Cluster, hostile: &async_nats::Client) {
    let _ = hostile.flush().await;
    let client = cluster.nats_client().await;
    let get = json!({"id": "settle"}).to_string();
    for p in 0..3 {
        for role in [Role::Primary, Role::Replica] {
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                client.request(subjects::request(p, role, Op::Get), get.clone().into()),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn hostile_writes_over_nats_are_refused_and_the_partition_keeps_serving() {
    let cluster = Cluster::start(3).await;
    let client = cluster.nats_client().await;
    let mine = (0..)
        .map(|i| format!("hostile-{i}"))
        .find(|id| partition_of(id, 3) == 1)
        .unwrap();
    let foreign = (0..)
        .map(|i| format!("foreign-{i}"))
        .find(|id| partition_of(id, 3) != 1)
        .unwrap();
    let user = |id: &str, group: u64| json!({"id": id, "name": "Eve", "email": "eve@example.com", "group": group});
    let create = |request_id: &str, user: Value| json!({"request_id": request_id, "kind": "create", "user": user});
    let cases = [
        (
            "a request id with CR/LF",
            create("r\r\nX-Evil: 1", user(&mine, 1)),
            "request_id",
        ),
        (
            "a 3,000-byte id",
            create("r2", user(&"x".repeat(3000), 1)),
            "id",
        ),
        (
            "an id with / and a control character",
            create("r3", user("a/b\u{7}", 1)),
            "id",
        ),
        (
            "group 4294967295",
            create("r4", user(&mine, 4_294_967_295)),
            "group",
        ),
        (
            "a record of another partition",
            create("r5", user(&foreign, 1)),
            "id",
        ),
        (
            "a delete sent to the create subject",
            json!({"request_id": "r6", "kind": "delete", "id": mine}),
            "kind",
        ),
    ];
    let subject = subjects::request(1, Role::Primary, Op::Create);
    let before = cluster.log_end(1).await;
    for (what, body, field) in cases {
        eprintln!("== phase: {what}");
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject.clone(), body.to_string().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within 5 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let response: Response = serde_json::from_slice(&reply.payload).expect("an answer");
        match response.answer {
            Err(ProtocolError::Invalid { fields }) => assert!(
                fields.iter().any(|f| f.field == field),
                "{what}: {fields:?} should name {field}"
            ),
            other => panic!("{what}: not refused: {other:?}"),
        }
    }
    assert_eq!(cluster.log_end(1).await, before, "nothing reached the log");

    eprintln!("== phase: the partition still serves writes and reads");
    let created = expect(cluster.create(&user(&mine, 3)).await, 201).await;
    assert_eq!(created.json()["group"], 3);
    expect(cluster.get(&mine).await, 200).await;
}

#[tokio::test]
async fn no_reply_the_gateways_identity_asks_for_lands_in_a_log() {
    let cluster = Cluster::start(3).await;
    let auth = cluster.nats_auth().unwrap().clone();
    let id = id_in(1, "target");
    expect(cluster.create(&user(&id, "Target")).await, 201).await;
    let entry = cluster.log_entry(1, &id).await.expect("the record's entry");
    let before = log_state(&cluster, 1).await;
    let log = subjects::log_subject(1, &id);
    let gateway = cluster.nats_client_as(&auth.gateway).await;

    eprintln!("== phase: $SRV.PING/INFO/STATS answered onto {log}");
    for verb in ["PING", "INFO", "STATS"] {
        publish_with_reply(&gateway, &format!("$SRV.{verb}"), &log, "").await;
        publish_with_reply(
            &gateway,
            &format!("$SRV.{verb}.{}", subjects::SERVICE_NAME),
            &log,
            "",
        )
        .await;
    }
    eprintln!("== phase: a dbnode's answer onto {log}");
    let get = json!({"id": id}).to_string();
    for role in [Role::Primary, Role::Replica] {
        publish_with_reply(&gateway, &subjects::request(1, role, Op::Get), &log, &get).await;
    }
    eprintln!("== phase: JetStream's own answers onto {log}");
    publish_with_reply(&gateway, "$JS.API.STREAM.INFO.RINGSTORE_P1", &log, "").await;
    publish_with_reply(
        &gateway,
        "$JS.API.DIRECT.GET.RINGSTORE_P1",
        &log,
        r#"{"seq":1,"batch":10}"#,
    )
    .await;
    eprintln!("== phase: a value planted in the key bucket, read back onto {log}");
    let forged = json!({"id": id, "record": user(&id, "FORGED by gateway"), "writer": "db-1",
        "request_id": "forged"});
    let kv = jetstream::new(gateway.clone())
        .get_key_value(subjects::IDEMPOTENCY_BUCKET)
        .await
        .expect("the gateway reaches its key bucket");
    kv.put("forged", forged.to_string().into())
        .await
        .expect("the gateway may write its keys");
    let bucket = format!("KV_{}", subjects::IDEMPOTENCY_BUCKET);
    let key = format!("$KV.{}.forged", subjects::IDEMPOTENCY_BUCKET);
    publish_with_reply(
        &gateway,
        &format!("$JS.API.DIRECT.GET.{bucket}.{key}"),
        &log,
        "",
    )
    .await;
    publish_with_reply(
        &gateway,
        &format!("$JS.API.DIRECT.GET.{bucket}"),
        &log,
        &json!({"last_by_subj": key, "no_hdr": true}).to_string(),
    )
    .await;
    settle(&cluster, &gateway).await;

    eprintln!("== phase: the log is untouched and the record reads as written");
    assert_eq!(log_state(&cluster, 1).await, before, "P1's log changed");
    assert_eq!(
        cluster.log_entry(1, &id).await,
        Some(entry),
        "the record's entry changed"
    );
    let read = expect(cluster.get(&id).await, 200).await;
    assert_eq!(read.json()["name"], "Target");
}

#[tokio::test]
async fn a_dbnode_cannot_make_anything_write_a_log_it_does_not_hold() {
    let cluster = Cluster::start(3).await;
    let auth = cluster.nats_auth().unwrap().clone();
    // db-1 holds P1 (primary) and P0 (replica); P2 is not its.
    let victim = id_in(2, "victim");
    expect(cluster.create(&user(&victim, "Victim")).await, 201).await;
    let entry = cluster
        .log_entry(2, &victim)
        .await
        .expect("the victim's entry");
    let before = log_state(&cluster, 2).await;
    let log = subjects::log_subject(2, &victim);
    let db1 = cluster.nats_client_as(auth.node(1)).await;

    eprintln!("== phase: JetStream's answers about P1 addressed to {log}");
    publish_with_reply(&db1, "$JS.API.STREAM.INFO.RINGSTORE_P1", &log, "").await;
    eprintln!("== phase: an entry planted in P1, read back onto {log}");
    let planted = subjects::log_subject(1, "planted");
    let forged = json!({"id": victim, "record": user(&victim, "FORGED by db-1"), "writer": "db-1",
        "request_id": "forged"});
    let js = jetstream::new(db1.clone());
    js.publish(planted.clone(), forged.to_string().into())
        .await
        .expect("db-1 may append to P1")
        .await
        .expect("the plant is stored");
    publish_with_reply(
        &db1,
        &format!("$JS.API.DIRECT.GET.RINGSTORE_P1.{planted}"),
        &log,
        "",
    )
    .await;
    publish_with_reply(
        &db1,
        "$JS.API.DIRECT.GET.RINGSTORE_P1",
        &log,
        &json!({"last_by_subj": planted, "no_hdr": true}).to_string(),
    )
    .await;
    publish_with_reply(
        &db1,
        "$JS.API.DIRECT.GET.RINGSTORE_P1",
        &log,
        r#"{"seq":1,"batch":50}"#,
    )
    .await;
    eprintln!("== phase: a consumer of P1 delivering into {log}");
    let consumer = json!({"stream_name": "RINGSTORE_P1",
        "config": {"deliver_subject": log, "deliver_policy": "all", "ack_policy": "none"}});
    let created = tokio::time::timeout(
        Duration::from_secs(3),
        db1.request(
            "$JS.API.CONSUMER.CREATE.RINGSTORE_P1",
            consumer.to_string().into(),
        ),
    )
    .await;
    assert!(
        !matches!(created, Ok(Ok(ref m)) if !String::from_utf8_lossy(&m.payload).contains("error")),
        "db-1 created a consumer: {created:?}"
    );
    eprintln!("== phase: a message db-1 sends itself, whose reply subject is {log}");
    let mut own = db1.subscribe(subjects::node_ping(NodeId(1))).await.unwrap();
    publish_with_reply(&db1, &subjects::node_ping(NodeId(1)), &log, "").await;
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), own.next()).await {
        if let Some(reply) = message.reply {
            let _ = db1.publish(reply, forged.to_string().into()).await;
        }
    }
    eprintln!("== phase: a plain append to P2");
    let _ = db1.publish(log.clone(), forged.to_string().into()).await;
    settle(&cluster, &db1).await;

    eprintln!("== phase: P2's log is untouched and the victim reads as written");
    assert_eq!(log_state(&cluster, 2).await, before, "P2's log changed");
    assert_eq!(
        cluster.log_entry(2, &victim).await,
        Some(entry),
        "the victim's entry changed"
    );
    let read = expect(cluster.get(&victim).await, 200).await;
    assert_eq!(read.json()["name"], "Victim");
}

#[tokio::test]
async fn forged_presence_stops_no_node_and_misleads_no_gateway() {
    let mut cluster = Cluster::start(3).await;
    let auth = cluster.nats_auth().unwrap().clone();
    let db1 = cluster.nats_client_as(auth.node(1)).await;
    let js = jetstream::new(db1.clone());

    eprintln!("== phase: db-1 makes the server publish db-2's heartbeat, from another process");
    let heartbeat = |node: u32, state: &str| {
        json!({"node": format!("db-{node}"), "instance": "rogue", "state": state,
            "partitions": []})
        .to_string()
    };
    let planted = subjects::log_subject(1, "presence-plant");
    js.publish(planted.clone(), heartbeat(2, "ready").into())
        .await
        .unwrap()
        .await
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for target in [2u32, 0] {
            let presence = subjects::presence(NodeId(target));
            publish_with_reply(
                &db1,
                "$JS.API.DIRECT.GET.RINGSTORE_P1",
                &presence,
                &json!({"last_by_subj": planted, "no_hdr": true}).to_string(),
            )
            .await;
            publish_with_reply(
                &db1,
                &format!("$JS.API.DIRECT.GET.RINGSTORE_P1.{planted}"),
                &presence,
                "",
            )
            .await;
        }
        eprintln!("== phase: db-1 heartbeats naming db-0 (catching up) and 2,000 made-up nodes");
        for fake in std::iter::once(0).chain(100..2100) {
            let _ = db1
                .publish(
                    subjects::presence(NodeId(1)),
                    heartbeat(fake, "catching-up").into(),
                )
                .await;
        }
        db1.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!("== phase: every node still runs and the gateway sees the three as they are");
    for i in 0..3 {
        assert!(cluster.node(i).is_running(), "db-{i} stopped");
    }
    let view = expect(
        send(
            "cluster",
            cluster.request(reqwest::Method::GET, "/api/cluster"),
        )
        .await,
        200,
    )
    .await;
    let nodes = view.json()["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "the gateway's node list: {nodes:?}");
    for node in &nodes {
        assert_eq!(node["state"], "ready", "{node}");
        assert_eq!(node["live"], true, "{node}");
    }
    expect(
        cluster.create(&user(&id_in(0, "after"), "After")).await,
        201,
    )
    .await;
}

#[tokio::test]
async fn an_impossible_log_position_from_a_copy_leaves_no_partition_unreadable() {
    let cluster = Cluster::start(3).await;
    let auth = cluster.nats_auth().unwrap().clone();
    let id = id_in(0, "floor");
    expect(cluster.create(&user(&id, "Floor")).await, 201).await;

    eprintln!("== phase: a rogue with P0's replica identity (db-1) answers reads with u64::MAX");
    let rogue = cluster.nats_client_as(auth.node(1)).await;
    let mut gets = rogue
        .subscribe(subjects::request(0, Role::Replica, Op::Get))
        .await
        .unwrap();
    let lie = serde_json::to_vec(&Response {
        answer: Err(ProtocolError::NotFound),
        seen: u64::MAX,
        epoch: u64::MAX,
    })
    .unwrap();
    let answering = tokio::spawn({
        let rogue = rogue.clone();
        async move {
            while let Some(request) = gets.next().await {
                if let Some(reply) = request.reply {
                    let _ = rogue.publish(reply, lie.clone().into()).await;
                }
            }
        }
    });
    let lied_to = Instant::now();
    while lied_to.elapsed() < Duration::from_secs(2) {
        let _ = cluster.get(&id).await;
    }
    answering.abort();
    drop(rogue);

    eprintln!("== phase: once the rogue is gone, P0 reads, LIST and COUNT answer");
    let recovered = Instant::now();
    eventually(Duration::from_secs(5), || async {
        let read = cluster.get(&id).await;
        (read.status() == 200).then_some(())
    })
    .await;
    eprintln!(
        "== MEASURED: P0 readable again {:?} after the rogue left",
        recovered.elapsed()
    );
    expect(
        send("list", cluster.request(reqwest::Method::GET, "/api/users")).await,
        200,
    )
    .await;
    expect(
        send(
            "count",
            cluster.request(reqwest::Method::GET, "/api/users/count"),
        )
        .await,
        200,
    )
    .await;
    let metrics = cluster.metrics().await;
    let counted = metric_sample(
        &metrics,
        "ringstore_impossible_answers_total{partition=\"0\"}",
    );
    assert!(
        counted >= 1.0,
        "the impossible answers are counted: {counted}"
    );
}
