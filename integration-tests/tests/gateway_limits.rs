//! What an HTTP client can make the real gateway hold: a connection that dribbles its headers
//! (slowloris) is closed after `HEADER_TIMEOUT_MS` (5 s by default), and a write whose body
//! comes slowly is answered 408 after `MAX_REQUEST_MS`, while other clients are served.

use std::time::Duration;

use integration_tests::{expect, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let cluster = Cluster::builder().without_auth().start().await;
    let port = cluster.base_url().rsplit(':').next().unwrap().to_owned();
    let mut slow = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect to the gateway");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: ringstore\r\nX-Slow: ")
        .await
        .unwrap();
    let opened = Instant::now();

    eprintln!("== phase: others are served meanwhile");
    expect(cluster.get("anyone").await, 404).await;

    eprintln!("== phase: the half-sent request is cut off");
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read(&mut buf)).await;
    let held = opened.elapsed();
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => {} // closed (maybe after a 408 answer) or reset
        Err(_) => panic!("the connection was still open after {held:?}"),
    }
    eprintln!("== closed after {held:?}");
    assert!(held >= Duration::from_secs(4), "closed too early: {held:?}");
    assert!(held < Duration::from_secs(10), "held for {held:?}");
}

#[tokio::test]
async fn a_request_whose_body_never_finishes_is_answered_408() {
    let cluster = Cluster::builder()
        .gateway_env("MAX_REQUEST_MS", 3000)
        .start()
        .await;
    let port = cluster.base_url().rsplit(':').next().unwrap().to_owned();
    let mut slow = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect to the gateway");
    let head = format!(
        "POST /api/user HTTP/1.1\r\nHost: ringstore\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        cluster.api_key().key
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let opened = Instant::now();

    eprintln!("== phase: others are served meanwhile");
    expect(cluster.get("anyone").await, 404).await;

    eprintln!("== phase: the unfinished request is answered 408 and nothing is created");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut answer)).await;
    let held = opened.elapsed();
    assert!(read.is_ok(), "still open after {held:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{held:?}: {text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(held < Duration::from_secs(8), "answered after {held:?}");
    let count = cluster.request(reqwest::Method::GET, "/api/users/count");
    let count = expect(integration_tests::send("count", count).await, 200).await;
    assert_eq!(count.json()["count"], 0);
}

#[tokio::test]
async fn made_up_methods_cannot_grow_the_metrics() {
    let cluster = Cluster::start(3).await;
    eprintln!("== phase: 300 requests with made-up 2 KB method names");
    for i in 0..300 {
        let name = format!("MADEUP{i}{}", "X".repeat(2048));
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let response = cluster.request(method, "/api/user/x").send().await;
        // Refused one way or another (405, 400 or a closed connection), never served.
        if let Ok(response) = response {
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
    eprintln!("== phase: /metrics holds one `other` label, not 300 new ones");
    let metrics = cluster.request(reqwest::Method::GET, "/metrics");
    let text = expect(integration_tests::send("metrics", metrics).await, 200)
        .await
        .text;
    assert!(!text.contains("MADEUP"), "a made-up method became a label");
    assert!(text.len() < 200_000, "/metrics is {} bytes", text.len());
}
