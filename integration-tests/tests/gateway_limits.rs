//! What an HTTP client can make the real gateway hold: a connection that dribbles its headers
//! (slowloris) is closed after `HEADER_TIMEOUT_MS` (5 s by default), and a write whose body
//! comes slowly is answered 408 after `MAX_REQUEST_MS`, while other clients are served.
//!
//! Also (issue 25): one deadline from accept to a whole request head for every protocol
//! (silence, a partial HTTP/2 preface, a preface and SETTINGS, HEADERS without END_HEADERS), a
//! bounded head, a connection cap, a write timeout that lets go of clients that do not read
//! (stalled change feeds included), and a shutdown bounded by `SHUTDOWN_TIMEOUT_MS` with
//! NATS down. Memory is measured as the kernel reports it: the gateway's `VmRSS` and the
//! send queues of its sockets.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::probe::{rss_kib, sockets_on, TCP_ESTABLISHED};
use integration_tests::{eventually, expect, metric_sample, Cluster};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The gateway's address, for raw TCP clients.
fn gateway_addr(cluster: &Cluster) -> SocketAddr {
    let url = cluster.base_url();
    let port = url.rsplit(':').next().unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Reads (and drops) what `stream` receives until the gateway closes it (EOF or reset): the
/// time from `opened` then, or `None` if it is still open at `opened + within`.
async fn closed_after(
    mut stream: TcpStream,
    opened: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = opened + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The HTTP/2 connection preface of a client.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: a 9-byte header (length, type, flags, stream) and `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

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

#[tokio::test]
async fn connections_that_never_send_a_whole_request_head_are_closed_at_the_header_deadline() {
    let header_timeout = Duration::from_millis(2000);
    let cluster = Cluster::builder()
        .gateway_env("HEADER_TIMEOUT_MS", header_timeout.as_millis())
        .start()
        .await;
    let addr = gateway_addr(&cluster);
    let settings = frame(0x4, 0, 0, &[]);
    // HEADERS on stream 1 (`:method GET`, `:scheme http`), flags 0: no END_HEADERS, so the
    // header block goes on in a CONTINUATION that never comes.
    let headers = frame(0x1, 0x0, 1, &[0x82, 0x86]);
    let kinds: [(&'static str, usize, Vec<u8>); 4] = [
        ("zero bytes", 200, Vec::new()),
        ("a partial HTTP/2 preface", 50, PREFACE[..16].to_vec()),
        (
            "an h2c preface + SETTINGS",
            20,
            [PREFACE, &settings].concat(),
        ),
        (
            "HEADERS without END_HEADERS",
            20,
            [PREFACE, &settings, &headers].concat(),
        ),
    ];

    eprintln!("== phase: 290 connections that never complete a request head");
    let mut waits = Vec::new();
    for (kind, n, bytes) in &kinds {
        for _ in 0..*n {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let opened = Instant::now();
            stream.write_all(bytes).await.unwrap();
            let kind: &'static str = kind;
            waits.push(tokio::spawn(async move {
                (
                    kind,
                    closed_after(stream, opened, Duration::from_secs(12)).await,
                )
            }));
        }
    }

    eprintln!("== phase: others are served meanwhile");
    expect(cluster.get("anyone").await, 404).await;

    eprintln!("== phase: each is closed at the deadline, whatever it sent");
    let mut results = Vec::new();
    for wait in waits {
        results.push(wait.await.unwrap());
    }
    let mut failures = Vec::new();
    for (kind, n, _) in &kinds {
        let times: Vec<Option<Duration>> = results
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, t)| *t)
            .collect();
        let closed: Vec<Duration> = times.iter().flatten().copied().collect();
        eprintln!(
            "{kind}: {} of {n} closed within 12 s; earliest {:?}, latest {:?}",
            closed.len(),
            closed.iter().min(),
            closed.iter().max(),
        );
        if closed.len() < *n {
            failures.push(format!(
                "{kind}: {} of {n} still open after 12 s",
                n - closed.len()
            ));
        }
        if let Some(early) = closed
            .iter()
            .find(|t| **t < header_timeout - Duration::from_millis(100))
        {
            failures.push(format!("{kind}: one closed too early, after {early:?}"));
        }
        if let Some(late) = closed
            .iter()
            .find(|t| **t > header_timeout + Duration::from_secs(2))
        {
            failures.push(format!("{kind}: one closed only after {late:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    expect(cluster.get("anyone").await, 404).await;
}

#[tokio::test]
async fn an_http2_connection_idle_after_a_request_is_shut_down_at_the_header_deadline() {
    let header_timeout = Duration::from_millis(2000);
    let cluster = Cluster::builder()
        .gateway_env("HEADER_TIMEOUT_MS", header_timeout.as_millis())
        .start()
        .await;
    let addr = gateway_addr(&cluster);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp)
        .await
        .expect("an HTTP/2 connection");
    let connection = tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::get(format!("http://{addr}/health"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.expect("a response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
    }
    let idle = Instant::now();

    eprintln!("== phase: idle, it gets a GOAWAY and is closed at the deadline");
    let closed = tokio::time::timeout(Duration::from_secs(12), connection).await;
    let took = idle.elapsed();
    eprintln!("closed {took:?} after its last response: {closed:?}");
    assert!(
        closed.is_ok(),
        "still open {took:?} after its last response"
    );
    assert!(
        took >= header_timeout - Duration::from_millis(100),
        "closed after {took:?}"
    );
    assert!(
        took < header_timeout + Duration::from_secs(2),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn unfinished_request_heads_cannot_make_the_gateway_hold_memory() {
    // A long header deadline: what must act here is the bound on a head, not the deadline.
    let mut cluster = Cluster::builder()
        .gateway_env("HEADER_TIMEOUT_MS", 30_000)
        .start()
        .await;
    let addr = gateway_addr(&cluster);
    let pid = cluster.gateway().pid().expect("the gateway runs");
    for _ in 0..20 {
        expect(cluster.get("warm-up").await, 404).await;
    }
    let before = rss_kib(pid);

    eprintln!("== phase: 200 connections each send ~381 KB of a head that never ends");
    let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: ringstore\r\n{}",
        line.repeat(381)
    );
    let head = std::sync::Arc::new(head.into_bytes());
    let mut sends = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = head.clone();
        sends.push(tokio::spawn(async move {
            // The gateway may refuse the rest at any point (431, then a closed connection).
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&head)).await;
            (stream, Instant::now())
        }));
    }
    let mut streams = Vec::new();
    for send in sends {
        streams.push(send.await.unwrap());
    }
    let ports: BTreeSet<u16> = streams
        .iter()
        .map(|(s, _)| s.local_addr().unwrap().port())
        .collect();
    // Measured once the gateway has taken in what it will take: each of these connections is
    // gone, or has nothing left unread in the kernel.
    let gateway_port = addr.port();
    eventually(Duration::from_secs(20), || async {
        let unread: u64 = sockets_on(gateway_port)
            .iter()
            .filter(|s| ports.contains(&s.remote_port) && s.state == TCP_ESTABLISHED)
            .map(|s| s.rx_queue)
            .sum();
        (unread == 0).then_some(())
    })
    .await;
    let held = sockets_on(gateway_port)
        .iter()
        .filter(|s| ports.contains(&s.remote_port) && s.is_held())
        .count();
    let after = rss_kib(pid);
    eprintln!(
        "gateway RSS {:.1} MiB before, {:.1} MiB with the 200 heads sent (+{:.1} MiB); \
         {held} of the 200 connections held",
        mib(before),
        mib(after),
        mib(after.saturating_sub(before)),
    );
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "200 unfinished heads grew the gateway's RSS by {:.1} MiB",
        mib(after.saturating_sub(before))
    );

    eprintln!("== phase: each is refused long before the header deadline; others are served");
    expect(cluster.get("anyone").await, 404).await;
    let mut open = 0;
    for (stream, sent) in streams {
        if closed_after(stream, sent, Duration::from_secs(5))
            .await
            .is_none()
        {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} of 200 oversized heads still open 5 s after sending"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let cluster = Cluster::builder()
        .gateway_env("MAX_CONNECTIONS", 64)
        .gateway_env("HEADER_TIMEOUT_MS", 30_000)
        .start()
        .await;
    let addr = gateway_addr(&cluster);

    eprintln!("== phase: 64 idle connections fill the cap");
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }

    eprintln!("== phase: 8 more are closed at once");
    let mut refused = Vec::new();
    for _ in 0..8 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        refused.push(closed_after(stream, Instant::now(), Duration::from_secs(5)).await);
    }
    eprintln!("closed after {refused:?}");
    assert!(
        refused
            .iter()
            .all(|t| t.is_some_and(|t| t < Duration::from_secs(1))),
        "beyond the cap: {refused:?}"
    );

    eprintln!("== phase: once the idle ones go, others are served; the refusals are counted");
    drop(idle);
    eventually(Duration::from_secs(10), || async {
        let response = cluster.request(Method::GET, "/health").send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let text = cluster.metrics().await;
    assert!(
        metric_sample(&text, "ringstore_http_connections_refused_total") >= 8.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn stalled_change_feeds_release_their_connections_and_buffers() {
    let write_timeout = Duration::from_millis(1000);
    // An ended feed whose last bytes all fit in the kernel's send queue has no write left to
    // time out: its connection is idle, and closed at the idle deadline (HEADER_TIMEOUT_MS, then
    // a 1 s grace for a graceful close). Both bound how long it may be held.
    let header_timeout = Duration::from_millis(2000);
    let release = write_timeout.max(header_timeout) + Duration::from_secs(1);
    let mut cluster = Cluster::builder()
        .gateway_env("MAX_CHANGE_FEEDS", 32)
        .gateway_env("CHANGE_FEED_STALL_MS", 300)
        .gateway_env("HEADER_TIMEOUT_MS", header_timeout.as_millis())
        .gateway_env("WRITE_TIMEOUT_MS", write_timeout.as_millis())
        .start()
        .await;
    let addr = gateway_addr(&cluster);
    let pid = cluster.gateway().pid().expect("the gateway runs");
    let cluster = &cluster;
    let request = format!(
        "GET /api/users/changes?since=now HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        cluster.api_key().key
    );
    let name = "n".repeat(256);
    let email = format!(
        "{}@{}.{}.example.com",
        "e".repeat(64),
        "d".repeat(63),
        "c".repeat(63)
    );
    expect(cluster.get("warm-up").await, 404).await;
    let before = rss_kib(pid);
    // The attacker's sockets: never read, never closed.
    let mut stalled = Vec::new();
    let mut written = 0;
    let mut rounds = Vec::new();
    for round in 1..=3 {
        eprintln!("== round {round}: 32 feeds whose clients never read");
        let mut ports = BTreeSet::new();
        for _ in 0..32 {
            // A small receive window and segments, so that a few hundred writes stall the
            // feed: with the defaults, the kernel queues ~3.7 MB per connection first (~7,000
            // writes), on loopback's 64 KiB segments.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket2::SockRef::from(&socket).set_tcp_mss(536).unwrap();
            let mut stream = socket.connect(addr).await.expect("connect");
            stream.write_all(request.as_bytes()).await.unwrap();
            ports.insert(stream.local_addr().unwrap().port());
            stalled.push(stream);
        }
        eventually(Duration::from_secs(10), || async {
            (metric_sample(&cluster.metrics().await, "ringstore_change_feeds_open") == 32.0)
                .then_some(())
        })
        .await;

        // Ended either way: as slow clients (the queue full for CHANGE_FEED_STALL_MS), or by
        // the write timeout first (the socket stalled for WRITE_TIMEOUT_MS), whichever comes
        // first under this machine's load.
        eprintln!("== round {round}: writes until the gateway has ended all 32");
        let deadline = Instant::now() + Duration::from_secs(180);
        while metric_sample(&cluster.metrics().await, "ringstore_change_feeds_open") > 0.0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: not all ended after {written} writes"
            );
            let batch = (0..50).map(|i| {
                let body = json!({
                    "id": format!("w-{written}-{i}"), "name": name, "email": email, "group": 1
                });
                async move { expect(cluster.create(&body).await, 201).await }
            });
            futures::future::join_all(batch).await;
            written += 50;
        }
        let ended_at = Instant::now();

        eprintln!("== round {round}: the gateway lets go of their connections");
        let held_now = || {
            let sockets: Vec<_> = sockets_on(addr.port())
                .into_iter()
                .filter(|s| ports.contains(&s.remote_port) && s.is_held())
                .collect();
            (
                sockets.len(),
                sockets.iter().map(|s| s.tx_queue).sum::<u64>(),
            )
        };
        let mut held = held_now();
        while held.0 > 0 && ended_at.elapsed() < release + Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = held_now();
        }
        let all_held = sockets_on(addr.port())
            .iter()
            .filter(|s| s.is_held() && s.state != integration_tests::probe::TCP_LISTEN)
            .count();
        let queued: u64 = sockets_on(addr.port()).iter().map(|s| s.tx_queue).sum();
        let rss = rss_kib(pid);
        eprintln!(
            "round {round}: after {written} writes, {:?} after the last end: {} of this round's 32 \
             connections held ({:.1} MiB in their send queues); {all_held} connections held in all \
             (the test's HTTP client pool included), {:.1} MiB queued in the kernel for the \
             gateway's sockets; RSS {:.1} MiB (+{:.1})",
            ended_at.elapsed(),
            held.0,
            held.1 as f64 / 1048576.0,
            queued as f64 / 1048576.0,
            mib(rss),
            mib(rss.saturating_sub(before)),
        );
        rounds.push((held.0, queued, rss));
    }
    eprintln!("== phase: others are served");
    expect(cluster.get("anyone").await, 404).await;
    let text = cluster.metrics().await;
    for line in text.lines().filter(|l| {
        l.starts_with("ringstore_http_connections_closed_total")
            || l.starts_with("ringstore_change_feeds_ended_total")
    }) {
        eprintln!("{line}");
    }
    let (held, queued, rss) = rounds[2];
    let held_in_all: usize = rounds.iter().map(|r| r.0).sum();
    assert_eq!(
        held_in_all, 0,
        "stalled feeds' connections still held, per round: {rounds:?}"
    );
    assert!(
        queued < 1024 * 1024,
        "{queued} bytes still queued in the kernel"
    );
    // The writes themselves grow the gateway by 15-20 MiB (allocator arenas, the feeds'
    // consumers): a loose bound. What the stalled clients held was in the kernel.
    assert!(
        rss.saturating_sub(before) < 32 * 1024,
        "RSS grew by {:.1} MiB over 3 rounds ({held} held)",
        mib(rss.saturating_sub(before))
    );
    drop(stalled);
}

#[tokio::test]
async fn an_http2_feed_stalled_by_flow_control_loses_its_connection_once_ended() {
    let write_timeout = Duration::from_millis(1000);
    let cluster = Cluster::builder()
        .gateway_env("CHANGE_FEED_STALL_MS", 300)
        .gateway_env("WRITE_TIMEOUT_MS", write_timeout.as_millis())
        .start()
        .await;
    let addr = gateway_addr(&cluster);

    eprintln!("== phase: an HTTP/2 client opens a feed and grants it no flow-control window");
    // Its socket is read all along (PINGs answered): only the stream is stalled, which no
    // write timeout sees.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("an HTTP/2 connection");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}/api/users/changes?since=now"))
        .header("authorization", format!("Bearer {}", cluster.api_key().key))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the feed answers")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let _unread = response.into_body();

    eprintln!("== phase: writes until the gateway ends it as a slow client");
    let ended = r#"ringstore_change_feeds_ended_total{reason="slow-client"}"#;
    let cluster = &cluster;
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sample(&cluster.metrics().await, ended) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "not ended after {written} writes"
        );
        let batch = (0..20).map(|i| {
            let body = json!({"id": format!("h2-{written}-{i}"), "name": "Ann", "email": "a@example.com", "group": 1});
            async move { expect(cluster.create(&body).await, 201).await }
        });
        futures::future::join_all(batch).await;
        written += 20;
    }
    let ended_at = Instant::now();

    eprintln!("== phase: its connection is closed within WRITE_TIMEOUT_MS of the end");
    let closed = tokio::time::timeout(write_timeout + Duration::from_secs(5), connection).await;
    let took = ended_at.elapsed();
    eprintln!("after {written} writes; connection closed {took:?} after the end: {closed:?}");
    assert!(closed.is_ok(), "still open {took:?} after the feed ended");
    assert!(
        took < write_timeout + Duration::from_secs(2),
        "closed {took:?} after the end"
    );
    let aborted = r#"ringstore_http_connections_closed_total{reason="aborted"}"#;
    eventually(Duration::from_secs(5), || async {
        (metric_sample(&cluster.metrics().await, aborted) == 1.0).then_some(())
    })
    .await;
    expect(cluster.get("anyone").await, 404).await;
}

#[tokio::test]
async fn with_nats_down_and_2000_requests_in_flight_sigterm_exits_within_the_shutdown_timeout() {
    let shutdown_timeout = Duration::from_millis(3000);
    let mut cluster = Cluster::builder()
        .request_timeout(Duration::from_secs(30))
        .gateway_env("SHUTDOWN_TIMEOUT_MS", shutdown_timeout.as_millis())
        .gateway_env("MAX_CONCURRENT_REQUESTS", 4096)
        .gateway_env("MAX_CONNECTIONS", 4096)
        .start()
        .await;
    let addr = gateway_addr(&cluster);
    let key = cluster.api_key().key.clone();

    eprintln!("== phase: NATS goes away; 2000 requests wait for it");
    cluster.nats().kill();
    let mut clients = Vec::new();
    let mut ports = BTreeSet::new();
    for i in 0..2000 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /api/user/u{i} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        ports.insert(stream.local_addr().unwrap().port());
        clients.push(stream);
    }
    // Every request has been read by the gateway: its connection is established and holds
    // nothing unread.
    eventually(Duration::from_secs(30), || async {
        let taken = sockets_on(addr.port())
            .iter()
            .filter(|s| {
                ports.contains(&s.remote_port) && s.state == TCP_ESTABLISHED && s.rx_queue == 0
            })
            .count();
        (taken == 2000).then_some(())
    })
    .await;

    eprintln!("== phase: SIGTERM; the gateway exits within SHUTDOWN_TIMEOUT_MS");
    let gateway = cluster.gateway();
    gateway.sigterm();
    let signalled = Instant::now();
    let exited = gateway.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    eprintln!("exit {exited:?} {took:?} after SIGTERM");
    assert!(exited.is_some(), "still running {took:?} after SIGTERM");
    assert!(
        took < shutdown_timeout + Duration::from_millis(1500),
        "exited {took:?} after SIGTERM (SHUTDOWN_TIMEOUT_MS {shutdown_timeout:?})"
    );
    drop(clients);
}
