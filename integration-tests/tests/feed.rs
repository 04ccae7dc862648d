//! The change feed (`GET /api/users/changes`) against a real cluster: every acknowledged write
//! appears once, with the version its write answered; a reconnect with `Last-Event-ID` misses
//! and repeats nothing, across a gateway restart too; `since=now`, the group filter, the limit
//! on open feeds, keep-alives, and a client that stops reading being ended instead of
//! buffered for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::feed::{self, Change, Feed, Next, Sse};
use integration_tests::{eventually, expect, expect_problem, metric_sample, send, Cluster};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn user(id: &str, group: u32) -> Value {
    json!({ "id": id, "name": format!("User {id}"), "email": "feed@example.com", "group": group })
}

async fn open(cluster: &Cluster, query: &str, last: Option<&str>) -> Feed {
    match feed::open(
        &cluster.base_url(),
        Some(&cluster.api_key().key),
        query,
        last,
    )
    .await
    {
        Ok(feed) => feed,
        Err(response) => panic!(
            "the feed answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ),
    }
}

/// Creates `id` and returns the version it was acknowledged with.
async fn create(cluster: &Cluster, id: &str, group: u32) -> u64 {
    expect(cluster.create(&user(id, group)).await, 201)
        .await
        .etag()
}

fn versions(changes: &[Change]) -> Vec<(String, u64)> {
    changes.iter().map(|c| (c.id.clone(), c.version)).collect()
}

#[tokio::test]
async fn a_feed_delivers_every_change_once_and_resumes_exactly_after_its_last_event() {
    let cluster = Cluster::start(3).await;

    eprintln!("== phase: history before the feed: creates, an update, a delete");
    let mut latest = BTreeMap::new();
    for i in 0..12 {
        let id = format!("old-{i}");
        latest.insert(id.clone(), ("upsert", create(&cluster, &id, 1).await));
    }
    let patched = expect(
        cluster.patch("old-3", &json!({"name": "Renamed"})).await,
        200,
    )
    .await;
    latest.insert("old-3".into(), ("upsert", patched.etag()));
    let deleted = send("delete", cluster.request(Method::DELETE, "/api/user/old-5")).await;
    assert_eq!(deleted.status(), 204);
    let tombstone = cluster
        .log_end(protocol::partition::partition_of("old-5", 3))
        .await;
    latest.insert("old-5".into(), ("delete", tombstone));

    eprintln!("== phase: from the beginning: each record's latest change, once");
    let mut feed = open(&cluster, "", None).await;
    let first = feed.changes(latest.len(), WAIT).await;
    let seen: BTreeMap<_, _> = first
        .iter()
        .map(|c| (c.id.clone(), (c.op.as_str(), c.version)))
        .collect();
    assert_eq!(seen.len(), first.len(), "no record twice: {first:?}");
    assert_eq!(seen, latest);
    let renamed = first.iter().find(|c| c.id == "old-3").unwrap();
    assert_eq!(renamed.user["name"], "Renamed");
    assert_eq!(
        first.iter().find(|c| c.id == "old-5").unwrap().user,
        Value::Null
    );
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );

    eprintln!("== phase: live: new writes arrive with the versions they were acknowledged with");
    let mut acked = Vec::new();
    for i in 0..10 {
        let id = format!("live-{i}");
        acked.push((id.clone(), create(&cluster, &id, 2).await));
    }
    let live = feed.changes(acked.len(), WAIT).await;
    let mut got = versions(&live);
    got.sort();
    acked.sort();
    assert_eq!(got, acked);

    eprintln!("== phase: disconnect after 4 of 10 changes; reconnect with its Last-Event-ID");
    let mut written = Vec::new();
    for i in 0..10 {
        let id = format!("gap-{i}");
        written.push((id.clone(), create(&cluster, &id, 3).await));
    }
    let before = feed.changes(4, WAIT).await;
    let resume = before.last().unwrap().token.clone();
    drop(feed);
    for i in 10..15 {
        let id = format!("gap-{i}");
        written.push((id.clone(), create(&cluster, &id, 3).await));
    }
    let mut feed = open(&cluster, "", Some(&resume)).await;
    let after = feed.changes(written.len() - 4, WAIT).await;
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );
    let mut got = versions(&before);
    got.extend(versions(&after));
    got.sort();
    written.sort();
    assert_eq!(got, written, "nothing missed, nothing repeated");
}

#[tokio::test]
async fn since_now_starts_at_the_end_and_its_first_id_resumes() {
    let cluster = Cluster::start(3).await;
    create(&cluster, "before", 1).await;
    let mut feed = open(&cluster, "?since=now", None).await;
    match feed.next(WAIT).await {
        Some(Sse::Event {
            id: Some(_),
            data: None,
            ..
        }) => {}
        other => panic!("expected the id-only starting event, got {other:?}"),
    }
    let start = feed.last_id.clone().unwrap();
    drop(feed);
    let version = create(&cluster, "after", 1).await;
    // An EventSource reconnects to the same URL: the header wins over `since=now`.
    let mut feed = open(&cluster, "?since=now", Some(&start)).await;
    let changes = feed.changes(1, WAIT).await;
    assert_eq!(versions(&changes), [("after".to_owned(), version)]);
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );
}

#[tokio::test]
async fn a_group_filter_passes_the_changes_that_touch_the_group() {
    let cluster = Cluster::start(3).await;
    let mut feed = open(&cluster, "?group=1&since=now", None).await;
    create(&cluster, "in", 1).await;
    create(&cluster, "other", 2).await;
    create(&cluster, "leaving", 1).await;
    create(&cluster, "doomed", 1).await;
    expect(cluster.patch("leaving", &json!({"group": 2})).await, 200).await;
    expect(
        cluster.patch("other", &json!({"name": "Still 2"})).await,
        200,
    )
    .await;
    let deleted = send(
        "delete",
        cluster.request(Method::DELETE, "/api/user/doomed"),
    )
    .await;
    assert_eq!(deleted.status(), 204);
    create(&cluster, "last", 1).await;
    let changes = feed.changes(6, WAIT).await;
    let seen: BTreeSet<_> = changes
        .iter()
        .map(|c| (c.id.as_str(), c.op.as_str(), c.user["group"].as_u64()))
        .collect();
    let expected = BTreeSet::from([
        ("in", "upsert", Some(1)),
        ("leaving", "upsert", Some(1)),
        ("leaving", "upsert", Some(2)),
        ("doomed", "upsert", Some(1)),
        ("doomed", "delete", None),
        ("last", "upsert", Some(1)),
    ]);
    assert_eq!(seen, expected, "{changes:?}");
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );
}

#[tokio::test]
async fn a_feed_follows_every_write_across_a_gateway_restart() {
    let mut cluster = Cluster::start(3).await;
    let mut feed = open(&cluster, "?since=now", None).await;
    let mut written = Vec::new();
    for i in 0..20 {
        let id = format!("r-{i}");
        written.push((id.clone(), create(&cluster, &id, 1).await));
    }
    let mut seen = feed.changes(10, WAIT).await;

    eprintln!("== phase: SIGTERM the gateway: the feed ends with a resumable `end`");
    let stopping = tokio::spawn(async move {
        let mut rest = Vec::new();
        loop {
            match feed.next_change(WAIT).await {
                Next::Change(change) => rest.push(change),
                end => return (rest, end),
            }
        }
    });
    let status = cluster.gateway().terminate().await;
    assert!(status.success(), "graceful exit: {status:?}");
    let (rest, end) = stopping.await.unwrap();
    seen.extend(rest);
    let Next::End { reason, token } = end else {
        panic!("expected an end event, got {end:?}");
    };
    assert_eq!(reason, "shutdown");

    eprintln!("== phase: writes while it is down go through a restarted gateway later");
    cluster.gateway().start();
    cluster.wait_ready().await;
    for i in 20..30 {
        let id = format!("r-{i}");
        written.push((id.clone(), create(&cluster, &id, 1).await));
    }
    let mut feed = open(&cluster, "", Some(&token)).await;
    let missing = written.len() - seen.len();
    seen.extend(feed.changes(missing, WAIT).await);
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );

    eprintln!("== phase: kill -9 the gateway: the stream just closes; resume from the last id");
    cluster.gateway().kill();
    assert_eq!(feed.next_change(WAIT).await, Next::Closed);
    let last = feed.last_id.clone().unwrap();
    cluster.gateway().start();
    cluster.wait_ready().await;
    let version = create(&cluster, "r-final", 1).await;
    written.push(("r-final".into(), version));
    let mut feed = open(&cluster, "", Some(&last)).await;
    seen.extend(feed.changes(1, WAIT).await);

    let mut got = versions(&seen);
    got.sort();
    written.sort();
    assert_eq!(got, written, "every write once, across both restarts");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_ended_not_buffered_for_and_resumes() {
    let cluster = Cluster::builder()
        .gateway_env("CHANGE_FEED_STALL_MS", 300)
        .start()
        .await;
    let ended = r#"ringstore_change_feeds_ended_total{reason="slow-client"}"#;

    eprintln!("== phase: a client with a tiny receive window opens a feed and reads nothing");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = cluster
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /api/users/changes?since=now HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        cluster.api_key().key
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        (metric_sample(&cluster.metrics().await, "ringstore_change_feeds_open") == 1.0)
            .then_some(())
    })
    .await;

    eprintln!("== phase: writes until the gateway gives up on it");
    let name = "n".repeat(250);
    let mut written = 0;
    let cluster = &cluster;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while metric_sample(&cluster.metrics().await, ended) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled feed was never ended after {written} writes"
        );
        let batch = (0..50).map(|i| {
            let body = json!({
                "id": format!("w-{written}-{i}"), "name": name, "email": "w@example.com", "group": 1
            });
            async move { expect(cluster.create(&body).await, 201).await }
        });
        futures::future::join_all(batch).await;
        written += 50;
    }
    eprintln!("ended after {written} writes");
    assert_eq!(
        metric_sample(&cluster.metrics().await, "ringstore_change_feeds_open"),
        0.0
    );

    eprintln!("== phase: the client reads on: its events, then `end`; it resumes from there");
    let mut received = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut received)
        .await
        .unwrap();
    let text = String::from_utf8(received).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let resume = body
        .split("event: end\n")
        .nth(1)
        .and_then(|end| end.lines().find_map(|l| l.strip_prefix("id: ")))
        .unwrap_or_else(|| {
            panic!(
                "no end event; body ends with {:?}",
                &body[body.len().saturating_sub(300)..]
            )
        })
        .to_owned();
    assert!(body.contains(r#"{"reason":"slow-client"}"#));
    let delivered = body.matches("\"op\":\"upsert\"").count();
    assert!(
        delivered < written,
        "{delivered} of {written} before the end"
    );
    let mut feed = open(cluster, "", Some(&resume)).await;
    let rest = feed
        .changes(written - delivered, Duration::from_secs(20))
        .await;
    assert_eq!(
        feed.next_change(Duration::from_millis(300)).await,
        Next::Quiet
    );
    let ids: BTreeSet<_> = rest.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), rest.len(), "nothing repeated");
}

#[tokio::test]
async fn feeds_are_limited_kept_alive_and_refuse_bad_positions() {
    let cluster = Cluster::builder()
        .gateway_env("MAX_CHANGE_FEEDS", 2)
        .gateway_env("CHANGE_FEED_KEEPALIVE_MS", 200)
        .start()
        .await;
    let base = cluster.base_url();
    let key = cluster.api_key().key.clone();

    eprintln!("== phase: an idle feed sends keep-alive comments");
    let mut one = open(&cluster, "?since=now", None).await;
    one.next(WAIT).await.expect("the starting event");
    assert_eq!(
        one.next(Duration::from_secs(5)).await,
        Some(Sse::Comment("keep-alive".into()))
    );

    eprintln!(
        "== phase: MAX_CHANGE_FEEDS=2: a third is 503 with Retry-After; a slot frees on close"
    );
    let two = open(&cluster, "", None).await;
    let refused = feed::open(&base, Some(&key), "", None)
        .await
        .err()
        .expect("a third feed is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem = expect_problem(refused, 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("MAX_CHANGE_FEEDS"),
        "{problem}"
    );
    drop(two);
    let third = eventually(Duration::from_secs(10), || async {
        feed::open(&base, Some(&key), "", None).await.ok()
    })
    .await;
    drop(third);

    eprintln!("== phase: malformed positions and filters are 400, naming what is wrong");
    for (query, last, field) in [
        ("?since=later", None, "since"),
        ("?group=-1", None, "group"),
        ("", Some("garbage"), "Last-Event-ID"),
        ("", Some("0000000a.1.2.x"), "Last-Event-ID"),
    ] {
        let refused = feed::open(&base, Some(&key), query, last).await.err();
        let problem = expect_problem(refused.expect("refused"), 400).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    eprintln!("== phase: without a key: 401");
    let refused = feed::open(&base, None, "", None).await.err();
    expect_problem(refused.expect("refused"), 401).await;
}
