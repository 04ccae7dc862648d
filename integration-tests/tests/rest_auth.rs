//! REST authentication on the real gateway (`API_KEYS_FILE`, which every cluster test sets): a
//! call without a valid key is refused before it reaches a dbnode and changes nothing; the
//! probes stay open. Scopes per route are covered by the router tests.

use integration_tests::{client, expect, expect_problem, send, Cluster};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn calls_without_a_valid_key_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let ann = json!({"id": "ann", "name": "Ann", "email": "ann@example.com", "group": 1});
    for (who, http) in [
        ("no key", client(None)),
        ("unknown key", client(Some("guess"))),
    ] {
        eprintln!("== phase: {who}");
        let create = http.post(cluster.url("/api/user")).json(&ann);
        let response = send(&format!("POST with {who}"), create).await;
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let problem = expect_problem(response, 401).await;
        assert_eq!(problem["status"], 401);
        let challenge = challenge.expect("a 401 names its scheme");
        assert!(
            challenge.starts_with("Bearer realm=\"ringstore\""),
            "{challenge}"
        );
        assert_eq!(
            challenge.contains("invalid_token"),
            who == "unknown key",
            "{challenge}"
        );
        for path in ["/api/users", "/api/cluster", "/metrics"] {
            let response = send(path, http.get(cluster.url(path))).await;
            expect_problem(response, 401).await;
        }
        for open in ["/health", "/ready", "/openapi.json"] {
            expect(send(open, http.get(cluster.url(open))).await, 200).await;
        }
    }
    eprintln!("== phase: nothing was created; the harness's key works");
    expect(cluster.get("ann").await, 404).await;
    let count = cluster.request(Method::GET, "/api/users/count");
    let count = expect(send("count", count).await, 200).await;
    assert_eq!(count.json()["count"], 0);
    expect(cluster.create(&ann).await, 201).await;
}
