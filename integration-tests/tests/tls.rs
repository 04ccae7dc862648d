//! TLS end to end with certificates made for the test: nats-server requires TLS of every
//! client, the dbnodes and the gateway verify it with the test CA (`NATS_TLS_CA`), and the
//! gateway serves HTTPS (`TLS_CERT`, `TLS_KEY`).

use std::time::Duration;

use integration_tests::{client, expect, Cluster};
use serde_json::json;

#[tokio::test]
async fn a_cluster_runs_over_tls_and_refuses_plaintext() {
    let cluster = Cluster::builder().tls().start().await;
    let base = cluster.base_url();
    assert!(base.starts_with("https://"), "{base}");

    eprintln!("== phase: CRUD over HTTPS, through NATS over TLS");
    let ann = json!({"id": "ann", "name": "Ann", "email": "ann@example.com", "group": 1});
    expect(cluster.create(&ann).await, 201).await;
    assert_eq!(expect(cluster.get("ann").await, 200).await.json(), ann);
    expect(cluster.delete("ann").await, 204).await;

    eprintln!("== phase: plain HTTP on the HTTPS port gets no answer");
    let plain = base.replacen("https://", "http://", 1);
    let key = &cluster.api_key().key;
    let answer = client(Some(key))
        .get(format!("{plain}/api/users"))
        .send()
        .await;
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was served: {answer:?}"
    );

    eprintln!("== phase: a client that does not trust the CA is refused");
    let untrusting = client(Some(key)).get(format!("{base}/health")).send().await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    eprintln!("== phase: NATS refuses a plaintext client");
    let admin = cluster.nats_auth().expect("nats.conf users").admin.clone();
    let plaintext = admin
        .connect_options()
        .connection_timeout(Duration::from_secs(3))
        .connect(cluster.nats_url());
    let refused = tokio::time::timeout(Duration::from_secs(10), plaintext).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a plaintext NATS client got in: {refused:?}"
    );
}
