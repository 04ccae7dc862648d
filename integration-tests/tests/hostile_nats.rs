//! A NATS client sending dbnodes what the gateway never would: every such write is refused
//! with an error reply naming the bad fields, nothing reaches the log, and the partition keeps
//! serving (a panic in the partition's writer task would stop every later write).

use std::time::Duration;

use integration_tests::{expect, Cluster};
use protocol::partition::partition_of;
use protocol::{subjects, Op, ProtocolError, Response, Role};
use serde_json::{json, Value};

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
async fn a_request_whose_reply_subject_is_a_log_cannot_overwrite_the_log() {
    let cluster = Cluster::start(3).await;
    let id = (0..)
        .map(|i| format!("target-{i}"))
        .find(|id| partition_of(id, 3) == 1)
        .unwrap();
    let user = json!({"id": id, "name": "Target", "email": "t@example.com", "group": 1});
    expect(cluster.create(&user).await, 201).await;
    let before = cluster.log_entry(1, &id).await.expect("the record's entry");

    eprintln!("== phase: a get of {id} whose reply subject is the record's log subject");
    let client = cluster.nats_client().await;
    let get = json!({"id": id}).to_string();
    for role in [Role::Primary, Role::Replica] {
        client
            .publish_with_reply(
                subjects::request(1, role, Op::Get),
                subjects::log_subject(1, &id),
                get.clone().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // The same copies answer a proper request after it: the hostile one has been handled.
    for role in [Role::Primary, Role::Replica] {
        let reply = client
            .request(subjects::request(1, role, Op::Get), get.clone().into())
            .await
            .expect("a proper request is answered");
        let response: Response = serde_json::from_slice(&reply.payload).unwrap();
        assert!(response.answer.is_ok(), "{role:?}: {:?}", response.answer);
    }
    assert_eq!(
        cluster.log_entry(1, &id).await,
        Some(before),
        "the record's log entry is untouched"
    );
}
