//! `Idempotency-Key` against a real cluster (the key bucket in JetStream KV, the gateway's
//! NATS user with its production permissions): the first outcome replayed and applied once,
//! 422 for a key reused on another request (the original design answered 204 to a DELETE and
//! kept the record), one record for a create without id retried, concurrent duplicates.

use integration_tests::{expect, expect_problem, send, Cluster};
use protocol::partition::partition_of;
use reqwest::Method;
use serde_json::{json, Value};

fn user(id: &str) -> Value {
    json!({ "id": id, "name": "Keyed", "email": "keyed@example.com", "group": 1 })
}

fn keyed(cluster: &Cluster, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    cluster.request(method, path).header("Idempotency-Key", key)
}

#[tokio::test]
async fn a_key_replays_its_first_outcome_and_refuses_other_requests() {
    let cluster = Cluster::start(3).await;
    let p = partition_of("keyed-a", 3);

    eprintln!("== phase: a create with key K, then its retry");
    let post = || keyed(&cluster, Method::POST, "/api/user", "K").json(&user("keyed-a"));
    let first = expect(send("create", post()).await, 201).await;
    let end = cluster.log_end(p).await;
    let again = expect(send("retry", post()).await, 201).await;
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.etag(), first.etag());
    assert_eq!(again.json(), first.json());
    assert_eq!(cluster.log_end(p).await, end, "the retry appended nothing");

    eprintln!("== phase: K on a DELETE of the record: 422, the record stays");
    let delete = keyed(&cluster, Method::DELETE, "/api/user/keyed-a", "K");
    let problem = expect_problem(send("delete", delete).await, 422).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("\"K\""),
        "{problem}"
    );
    expect(cluster.get("keyed-a").await, 200).await;

    eprintln!("== phase: K on a create of another record, in another partition or not: 422");
    let other = keyed(&cluster, Method::POST, "/api/user", "K").json(&user("keyed-b"));
    expect_problem(send("other create", other).await, 422).await;
    expect(cluster.get("keyed-b").await, 404).await;
}

#[tokio::test]
async fn a_create_without_an_id_retried_with_its_key_makes_one_record() {
    let cluster = Cluster::start(3).await;
    let anon = json!({ "name": "Anon", "email": "anon@example.com", "group": 4 });
    let post = || keyed(&cluster, Method::POST, "/api/user", "anon").json(&anon);
    let first = expect(send("create", post()).await, 201).await;
    let again = expect(send("retry", post()).await, 201).await;
    assert_eq!(first.json()["id"], again.json()["id"]);
    let count = expect(
        cluster
            .request(Method::GET, "/api/users/count?group=4")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(count.json()["count"], 1);
}

#[tokio::test]
async fn concurrent_duplicates_apply_once() {
    let cluster = Cluster::start(3).await;
    let p = partition_of("keyed-c", 3);
    let before = cluster.log_end(p).await;
    let attempts = (0..10).map(|_| {
        let request = keyed(&cluster, Method::POST, "/api/user", "C").json(&user("keyed-c"));
        async move { send("create", request).await }
    });
    let mut performed = 0;
    for response in futures::future::join_all(attempts).await {
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        match status {
            201 if !replayed => performed += 1,
            201 | 409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        performed, 1,
        "one request performed, the others replayed or told to wait"
    );
    assert_eq!(cluster.log_end(p).await, before + 1, "one log entry");
}

/// The key bucket is bounded (`IDEMPOTENCY_KEY_MAX_BYTES`): at the bound a request with a new
/// key is answered 507 problem+json and not done; every write acknowledged before is there, and
/// writes without a key go on.
#[tokio::test]
async fn a_full_key_store_refuses_new_keys_clearly_and_loses_nothing() {
    let cluster = Cluster::builder()
        .dbnode_env("IDEMPOTENCY_KEY_MAX_BYTES", 16 * 1024)
        .start()
        .await;
    let mut created = Vec::new();
    let mut refused = None;
    for i in 0..500 {
        let id = format!("full-{i}");
        let request =
            keyed(&cluster, Method::POST, "/api/user", &format!("key-{i}")).json(&user(&id));
        let response = send("keyed create", request).await;
        match response.status().as_u16() {
            201 => created.push(id),
            507 => {
                refused = Some((id, expect_problem(response, 507).await));
                break;
            }
            other => panic!("keyed create {i}: unexpected {other}"),
        }
    }
    let (id, problem) = refused.expect("the bounded store filled up within 500 keys");
    eprintln!(
        "== MEASURED: {} keyed creates before the first 507",
        created.len()
    );
    assert_eq!(
        problem["type"],
        "https://ringstore.dev/problems/idempotency-keys-full"
    );
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("IDEMPOTENCY_KEY_MAX_BYTES"));
    expect(cluster.get(&id).await, 404).await;
    for id in &created {
        expect(cluster.get(id).await, 200).await;
    }
    expect(cluster.create(&user("no-key-after-full")).await, 201).await;
}
