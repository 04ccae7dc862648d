//! A dbnode's life cycle at its edges, against real processes: a log that is not the one the
//! copies were applied from (deleted and recreated, as after losing a NATS server's store),
//! SIGTERM at every phase of start-up, catch-up included, a gateway whose NATS server stalls,
//! and provisioning that cannot succeed. `KEEP_CLUSTER=1` keeps the logs.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use integration_tests::{eventually, expect, Cluster};
use protocol::partition::partition_of;
use protocol::{subjects, ProtocolError, Reply, Role};
use serde_json::{json, Value};
use tokio::time::Instant;

fn user(id: &str) -> Value {
    json!({ "id": id, "name": "Life Cycle", "email": "life@example.com", "group": 1 })
}

/// `count` ids of partition `p`, prefixed.
fn ids_in(prefix: &str, p: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| partition_of(id, 3) == p)
        .take(count)
        .collect()
}

#[tokio::test]
async fn copies_of_a_recreated_log_start_over_from_it_instead_of_wedging() {
    let mut cluster = Cluster::start(3).await;
    let old = ids_in("old", 1, 10);
    eprintln!("== phase: 10 records in P1");
    for id in &old {
        expect(cluster.create(&user(id)).await, 201).await;
    }

    eprintln!("== phase: stop P1's holders (db-1, db-2); delete P1's log");
    assert!(cluster.node(1).terminate().await.success());
    assert!(cluster.node(2).terminate().await.success());
    let js = jetstream::new(cluster.nats_client().await);
    js.delete_stream(subjects::stream_name(1))
        .await
        .expect("the admin deletes the stream");

    eprintln!("== phase: the operator provisions a new log; db-1 starts its copy over");
    cluster.provision().await;
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;
    cluster.wait_ready().await;
    let new = &ids_in("new", 1, 1)[0];
    let created = expect(cluster.create(&user(new)).await, 201).await;
    assert_eq!(created.etag(), 1, "the first entry of the new log");

    eprintln!("== phase: db-2 comes back and rebuilds its replica from the new log");
    cluster.node(2).start();
    cluster.wait_caught_up(2, Duration::from_secs(30)).await;
    for role in [Role::Primary, Role::Replica] {
        let copy = cluster.copy(1, role).await;
        match copy.get(new).await {
            Ok(Reply::User(found)) => assert_eq!(found.version, 1, "{role:?}"),
            other => panic!("{role:?} copy of P1 lacks {new}: {other:?}"),
        }
        assert_eq!(
            copy.get(&old[0]).await,
            Err(ProtocolError::NotFound),
            "the {role:?} copy equals the log, which no longer has {}",
            old[0]
        );
        assert_eq!(copy.count(None).await, Ok(Reply::Count { count: 1 }));
    }
    expect(cluster.get(&old[3]).await, 404).await;
}

/// How many times the node logging to `log` has begun its start-up.
fn starts(log: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.matches("opening storage").count()
}

#[tokio::test]
async fn sigterm_stops_a_node_promptly_in_every_phase_of_start_up() {
    let mut cluster = Cluster::start(3).await;
    eprintln!("== phase: 2,000 records, so that a wiped node's catch-up takes a while");
    let ids: Vec<String> = (0..2000).map(|i| format!("phase-{i}")).collect();
    futures::stream::iter(&ids)
        .for_each_concurrent(16, |id| {
            let cluster = &cluster;
            async move {
                expect(cluster.create(&user(id)).await, 201).await;
            }
        })
        .await;

    for delay in [0, 10, 30, 60, 100, 200, 400, 800] {
        eprintln!("== phase: wipe db-0, start it, SIGTERM {delay} ms into its start-up");
        cluster.node(0).kill9();
        cluster.node(0).wipe();
        let log = cluster.node(0).log_path().to_owned();
        let started = starts(&log);
        cluster.node(0).start();
        // From its first log line on, the node handles SIGTERM.
        eventually(Duration::from_secs(10), || async {
            (starts(&log) > started).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let asked = Instant::now();
        let status = cluster.node(0).terminate().await;
        let took = asked.elapsed();
        assert!(
            status.success(),
            "db-0 exits cleanly after {delay} ms: {status}"
        );
        assert!(
            took < Duration::from_secs(5),
            "db-0 took {took:?} to stop after {delay} ms"
        );
    }

    eprintln!("== phase: a last start completes and serves everything");
    cluster.node(0).start();
    cluster.wait_caught_up(0, Duration::from_secs(30)).await;
    let copy = cluster.copy(0, Role::Primary).await;
    let in_p0 = ids.iter().filter(|id| partition_of(id, 3) == 0).count() as u64;
    assert_eq!(copy.count(None).await, Ok(Reply::Count { count: in_p0 }));
}

#[tokio::test]
async fn with_nats_stalled_the_gateway_answers_within_its_budget_and_stops_on_sigterm() {
    let mut cluster = Cluster::builder()
        .request_timeout(Duration::from_millis(1000))
        .start()
        .await;
    eprintln!("== phase: NATS paused (SIGSTOP); 1,000 concurrent GETs");
    cluster.nats().pause();
    let started = Instant::now();
    let answers = futures::future::join_all((0..1000).map(|i| {
        let request = cluster
            .request(reqwest::Method::GET, &format!("/api/user/u{i}"))
            .timeout(Duration::from_secs(20));
        async move { request.send().await.map(|r| r.status().as_u16()) }
    }))
    .await;
    let took = started.elapsed();
    for answer in &answers {
        match answer {
            Ok(503 | 504) => {}
            other => panic!("a GET with NATS stalled answered {other:?}"),
        }
    }
    eprintln!("== 1,000 answers in {took:?}");
    assert!(took < Duration::from_secs(10), "1,000 GETs took {took:?}");

    eprintln!("== phase: a later request is answered within its budget too");
    let later = Instant::now();
    let status = cluster
        .request(reqwest::Method::GET, "/api/user/later")
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16();
    assert!(matches!(status, 503 | 504), "{status}");
    assert!(
        later.elapsed() < Duration::from_secs(3),
        "{:?}",
        later.elapsed()
    );

    eprintln!("== phase: /ready says so (503), /health still answers (the process is alive)");
    eventually(Duration::from_secs(10), || async {
        let r = cluster
            .request(reqwest::Method::GET, "/ready")
            .send()
            .await
            .ok()?;
        (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let health = cluster
        .request(reqwest::Method::GET, "/health")
        .send()
        .await;
    assert_eq!(health.expect("/health answers").status(), 200);

    eprintln!("== phase: SIGTERM stops the gateway promptly");
    let asked = Instant::now();
    cluster.gateway().terminate().await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_node_refuses_a_log_whose_retention_was_changed() {
    let mut cluster = Cluster::start(3).await;
    expect(cluster.create(&user(&ids_in("kept", 1, 1)[0])).await, 201).await;

    eprintln!("== phase: db-1 stops; the admin caps P1's log at 1,000 messages");
    assert!(cluster.node(1).terminate().await.success());
    let js = jetstream::new(cluster.nats_client().await);
    let mut stream = js
        .get_stream(subjects::stream_name(1))
        .await
        .expect("P1's log");
    let mut config = stream.info().await.expect("stream info").config.clone();
    let original = config.clone();
    config.max_messages = 1000;
    js.update_stream(config)
        .await
        .expect("the admin updates it");

    eprintln!("== phase: db-1 starts and refuses the log (it would lose records past 1,000)");
    cluster.node(1).start();
    let log = cluster.node(1).log_path().to_owned();
    eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("is not configured as a ringstore log (max_msgs is 1000)")
            .then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let this_start = text
        .rsplit("==== harness: starting")
        .next()
        .unwrap_or_default();
    assert!(
        !this_start.contains("ready; serving requests"),
        "db-1 must not serve from the capped log"
    );

    eprintln!("== phase: the admin restores the log; db-1 becomes ready by itself");
    js.update_stream(original).await.expect("restore");
    cluster.wait_node_ready(1).await;
}

/// Runs `dbnode --provision` against `nats_url` as `admin` with `password`, with a 2 s
/// provisioning timeout; returns its exit status, how long it ran and what it printed.
async fn provision_once(
    nats_url: &str,
    password: &str,
) -> (std::process::ExitStatus, Duration, String) {
    let bins = integration_tests::BinDir::locate(false);
    let dir = tempfile::tempdir().expect("a temp dir");
    let started = Instant::now();
    let out = tokio::process::Command::new(&bins.dbnode)
        .arg("--provision")
        .env("NATS_URL", nats_url)
        .env("NATS_USER", "admin")
        .env("NATS_PASSWORD", password)
        .env("PROVISION_TIMEOUT_SECS", "2")
        .env("DATA_DIR", dir.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("dbnode --provision ends within 30 s")
        .expect("dbnode --provision runs");
    let printed =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status, started.elapsed(), printed)
}

/// A deployment step that cannot succeed fails, instead of holding up whatever waits on it:
/// `--provision` with NATS unreachable or a wrong password gives up after
/// `PROVISION_TIMEOUT_SECS` with an error naming it, and succeeds at once with the right one.
#[tokio::test]
async fn provisioning_that_cannot_succeed_fails_within_its_timeout() {
    eprintln!("== phase: nothing listens at NATS_URL");
    let nowhere = format!("nats://127.0.0.1:{}", integration_tests::free_port());
    let (status, took, printed) = provision_once(&nowhere, "whatever").await;
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(printed.contains("PROVISION_TIMEOUT_SECS"), "{printed}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");

    eprintln!("== phase: a NATS server with nats.conf, and a wrong admin password");
    let dir = tempfile::tempdir().expect("a temp dir");
    let auth = integration_tests::NatsAuth::random();
    let nats = integration_tests::Nats::start_with_config(
        dir.path(),
        &dir.path().join("nats.log"),
        auth.clone(),
    )
    .await;
    let (status, took, printed) = provision_once(&nats.url(), "not-the-password").await;
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(printed.contains("PROVISION_TIMEOUT_SECS"), "{printed}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");

    eprintln!("== phase: the right password provisions");
    let (status, took, printed) = provision_once(&nats.url(), &auth.admin.password).await;
    assert!(status.success(), "{printed}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// An operator purges stray entries at a log's end (as admin, `STREAM.PURGE` with a subject
/// filter): the log's last sequence then names no entry. A copy rebuilt from that log must
/// still become ready: "caught up" is "nothing left to deliver", not "reached last_seq".
#[tokio::test]
async fn a_copy_rebuilt_from_a_log_whose_last_entries_were_purged_becomes_ready() {
    let mut cluster = Cluster::start(3).await;
    for i in 0..20 {
        let id = format!("kept-{i}");
        let user = json!({"id": id, "name": "Kept", "email": "k@example.com", "group": 1});
        expect(cluster.create(&user).await, 201).await;
    }
    eprintln!("== phase: two stray entries at the end of P1's log, then purged");
    let admin = cluster.nats_client().await;
    let js = jetstream::new(admin.clone());
    let stray = subjects::log_subject(1, "stray");
    for _ in 0..2 {
        js.publish(stray.clone(), "not an entry".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream = js.get_stream(subjects::stream_name(1)).await.unwrap();
    stream.purge().filter(stray).await.expect("the purge");
    let end = cluster.log_end(1).await;

    eprintln!("== phase: db-1's copies wiped and rebuilt from the logs (P1's ends at {end})");
    cluster.node(1).kill9();
    cluster.node(1).wipe();
    cluster.node(1).start();
    let started = Instant::now();
    cluster.wait_node_ready(1).await;
    eprintln!(
        "== MEASURED: db-1 ready {:?} after its start",
        started.elapsed()
    );
    for i in 0..20 {
        expect(cluster.get(&format!("kept-{i}")).await, 200).await;
    }
}
