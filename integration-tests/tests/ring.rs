//! The replication ring under failure, against real processes (nats-server, three dbnodes, the
//! gateway): docs/design.md "Write path", "Replication", "Read path" and "Failure
//! behaviour". A dbnode killed with -9 under write load, the original SIGTERM drill, a primary
//! paused past the request timeout, a wiped disk, a whole-cluster restart, read-your-writes
//! with a stalled replica, and a catch-up after 10,000 writes. Each scenario checks what the
//! gateway acknowledged against what the gateway serves and against each copy, asked directly
//! over NATS. Run `cargo build --workspace` first; `KEEP_CLUSTER=1` keeps the logs.

mod common;

use std::time::Duration;

use common::ledger::{
    assert_copy_count, assert_copy_equals, assert_copy_holds, assert_gateway_serves, Ledger,
};
use common::load::{churn, load_client, write_read_pairs, LoadReport};
use common::writes::{resolve, write_retried, Failures, Write};
use common::{
    gateway_sees_live, ids_by_partition, nats_reads, nats_requests, nats_writes, partition, user,
    Api, PARTITIONS,
};
use futures::StreamExt;
use integration_tests::{eventually, Cluster, ReadFrom};
use protocol::{NodeId, Role};
use serde_json::json;
use tokio::time::{sleep_until, Instant};

/// The gateway's `REQUEST_TIMEOUT_MS` where a scenario does not say otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);

#[tokio::test]
async fn kill_9_under_write_load_loses_nothing_and_clients_barely_notice() {
    let mut cluster = Cluster::builder()
        .request_timeout(REQUEST_TIMEOUT)
        .start()
        .await;
    let api = Api::of(&cluster);

    eprintln!("== phase: 4 clients write for 15 s; kill -9 db-1 at 5 s, restart it at 10 s");
    let start = Instant::now();
    let load = futures::future::join_all(
        (0..4).map(|client| load_client(api.clone(), client, start + Duration::from_secs(15))),
    );
    let chaos = async {
        sleep_until(start + Duration::from_secs(5)).await;
        eprintln!("== phase: kill -9 db-1 (under load)");
        cluster.node(1).kill9();
        let killed = Instant::now();
        sleep_until(start + Duration::from_secs(10)).await;
        eprintln!("== phase: start db-1 again (under load)");
        cluster.node(1).start();
        let p1_end = cluster.log_end(1).await;
        (killed, p1_end)
    };
    let (reports, (killed, p1_end_at_restart)) = tokio::join!(load, chaos);

    let mut ledger = Ledger::default();
    let mut failures = Failures::default();
    let mut unresolved = Vec::new();
    let mut writes = 0;
    for report in reports {
        ledger.merge(report.ledger);
        failures.merge(report.failures);
        unresolved.extend(report.unresolved);
        writes += report.writes;
    }
    eprintln!(
        "== measured: {writes} writes to {} records in 15 s",
        ledger.0.len()
    );
    failures.report("kill -9 of db-1 under load", killed);
    eprintln!(
        "== measured: writes that timed out on db-1 (in flight at the kill) and went to db-2: {}",
        nats_writes(&api, "primary", "timeout").await
    );

    eprintln!("== phase: no client saw a failure later than one request timeout after the kill");
    failures.assert_visible_only_within(killed, REQUEST_TIMEOUT);

    eprintln!(
        "== phase: re-send the {} writes that failed twice, with their keys",
        unresolved.len()
    );
    for write in &unresolved {
        let reply = resolve(&api, write).await;
        ledger.ack(&write.id, &reply);
    }

    eprintln!("== phase: db-1 is back and has applied both of its logs to the end");
    cluster.wait_caught_up(1, Duration::from_secs(30)).await;

    eprintln!("== phase: after its restart, db-1 took P1's writes again while the load ran");
    let after_restart: Vec<String> = ledger
        .in_partition(1)
        .0
        .into_iter()
        .filter(|(_, acked)| acked.version > p1_end_at_restart)
        .map(|(id, _)| id)
        .take(50)
        .collect();
    let mut found = false;
    for id in &after_restart {
        let (_, entry) = cluster
            .log_entry(1, id)
            .await
            .expect("acked writes are in the log");
        if entry.writer == NodeId(1) {
            found = true;
            break;
        }
    }
    assert!(found, "no P1 write after the restart was written by db-1");

    eprintln!(
        "== phase: every acknowledged write reads back as acknowledged ({} records)",
        ledger.0.len()
    );
    assert_gateway_serves(&api, &ledger).await;

    eprintln!(
        "== phase: db-1's primary copy of P1 and replica copy of P0 equal what was acknowledged"
    );
    assert_copy_equals(&cluster, 1, Role::Primary, &ledger).await;
    assert_copy_equals(&cluster, 0, Role::Replica, &ledger).await;
}

#[tokio::test]
async fn the_drill_sigterm_a_node_write_restart_then_kill_its_successor() {
    let mut cluster = Cluster::builder()
        .read_from(ReadFrom::Primary)
        .start()
        .await;
    let api = Api::of(&cluster);
    let ids = ids_by_partition("drill", 8);
    let mut ledger = Ledger::default();

    eprintln!("== phase: 5 records in each partition");
    for id in ids.iter().flat_map(|p| &p[..5]) {
        ledger
            .write(&api, Write::create(user(id, "Before", 1)))
            .await;
    }

    eprintln!("== phase: SIGTERM db-1 (primary of P1, replica of P0)");
    let status = cluster.node(1).terminate().await;
    assert!(status.success(), "db-1 exits cleanly on SIGTERM: {status}");

    eprintln!("== phase: create, update and delete in every partition: all succeed");
    for p in &ids {
        for id in &p[5..7] {
            ledger
                .write(&api, Write::create(user(id, "While down", 2)))
                .await;
        }
        ledger
            .write(
                &api,
                Write::update(&p[0], json!({"name": "Updated while down"})),
            )
            .await;
        ledger
            .write(&api, Write::update(&p[5], json!({"group": 22})))
            .await;
        ledger.write(&api, Write::delete(&p[1])).await;
    }
    assert_gateway_serves(&api, &ledger).await;

    eprintln!("== phase: start db-1; it catches up before it announces ready");
    cluster.node(1).start();
    cluster.wait_node_ready(1).await;
    eventually(Duration::from_secs(10), || gateway_sees_live(&api, "db-1")).await;

    eprintln!("== phase: every read is correct (READ_FROM=primary: P1 from db-1)");
    let by_primaries = nats_reads(&api, "primary").await;
    assert_gateway_serves(&api, &ledger).await;
    let answered = nats_reads(&api, "primary").await - by_primaries;
    assert!(
        answered >= ledger.0.len() as u64,
        "every read was answered by a primary ({answered} of {})",
        ledger.0.len()
    );
    assert_copy_equals(&cluster, 1, Role::Primary, &ledger).await;
    assert_copy_equals(&cluster, 0, Role::Replica, &ledger).await;

    eprintln!("== phase: kill -9 db-2 (primary of P2, replica of P1)");
    cluster.node(2).kill9();

    eprintln!("== phase: P1 reads come from db-1, P2 reads from db-0's replica: all correct");
    let by_replicas = nats_reads(&api, "replica").await;
    assert_gateway_serves(&api, &ledger).await;
    let answered = nats_reads(&api, "replica").await - by_replicas;
    let in_p2 = ledger.in_partition(2).0.len() as u64;
    assert!(
        answered >= in_p2,
        "P2's reads were answered by its replica ({answered} of {in_p2})"
    );

    eprintln!("== phase: writes to every partition succeed with db-2 dead");
    for p in &ids {
        ledger
            .write(&api, Write::create(user(&p[7], "db-2 dead", 3)))
            .await;
        ledger
            .write(
                &api,
                Write::update(&p[2], json!({"name": "Updated, db-2 dead"})),
            )
            .await;
        ledger.write(&api, Write::delete(&p[3])).await;
    }
    assert_gateway_serves(&api, &ledger).await;

    eprintln!("== phase: db-0's replica of P2 holds the takeover writes");
    assert_copy_equals(&cluster, 2, Role::Replica, &ledger).await;
}

#[tokio::test]
async fn a_primary_paused_past_the_request_timeout_neither_diverges_nor_loses_a_write() {
    let timeout = Duration::from_millis(1000);
    // Past the request timeout, and past the 3 s after which the gateway stops trying db-1.
    let pause = Duration::from_secs(5);
    let mut cluster = Cluster::builder().request_timeout(timeout).start().await;
    let api = Api::of(&cluster);
    let ids = ids_by_partition("pause", 12).swap_remove(1);
    let mut ledger = Ledger::default();

    eprintln!("== phase: 12 records in P1 (primary db-1, replica db-2)");
    for id in &ids {
        ledger.write(&api, Write::create(user(id, "P1", 1))).await;
    }

    eprintln!("== phase: 3 clients churn P1 for 8 s; SIGSTOP db-1 at 1 s, SIGCONT at 6 s");
    let start = Instant::now();
    let until = start + pause + Duration::from_secs(3);
    let writers = futures::future::join_all(
        ids.chunks(4)
            .map(|mine| churn(api.clone(), mine.to_vec(), until)),
    );
    let chaos = async {
        sleep_until(start + Duration::from_secs(1)).await;
        eprintln!("== phase: SIGSTOP db-1 (while writing)");
        cluster.node(1).stop();
        let stopped = Instant::now();
        sleep_until(start + Duration::from_secs(1) + pause).await;
        eprintln!("== phase: SIGCONT db-1 (while writing)");
        cluster.node(1).cont();
        stopped
    };
    let (reports, stopped) = tokio::join!(writers, chaos);
    let mut report = LoadReport::default();
    for r in reports {
        report.ledger.merge(r.ledger);
        report.failures.merge(r.failures);
        report.unresolved.extend(r.unresolved);
        report.writes += r.writes;
    }
    eprintln!("== measured: {} writes to P1 in 8 s", report.writes);
    report
        .failures
        .report("SIGSTOP of the primary db-1 for 5 s", stopped);
    let timed_out = nats_writes(&api, "primary", "timeout").await;
    eprintln!(
        "== measured: writes that timed out on the paused db-1 and went to db-2: {timed_out}"
    );
    assert!(
        timed_out > 0,
        "the pause was felt: some writes timed out on db-1"
    );
    report.failures.assert_visible_only_within(stopped, timeout);
    assert!(
        report.unresolved.is_empty(),
        "writes failed twice: {:?}",
        report.unresolved
    );
    ledger.merge(report.ledger);

    eprintln!("== phase: writes go through db-1 again (the log names it as the writer)");
    let hot = ids
        .iter()
        .find(|id| ledger.0[*id].user.is_some())
        .expect("a record survived the churn")
        .clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let write = Write::update(&hot, json!({ "name": format!("after {n}") }));
        let reply = resolve(&api, &write).await;
        ledger.ack(&hot, &reply);
        let (_, entry) = cluster
            .log_entry(1, &hot)
            .await
            .expect("the write is in the log");
        if entry.writer == NodeId(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write went through db-1 within 15 s of SIGCONT"
        );
    }
    for id in &ids {
        let write = match ledger.0[id].user {
            Some(_) => Write::update(id, json!({ "name": "Through db-1" })),
            None => Write::create(user(id, "Through db-1", 3)),
        };
        ledger.write(&api, write).await;
    }

    eprintln!("== phase: db-1 and db-2 catch up; both P1 copies equal what was acknowledged");
    cluster.wait_caught_up(1, Duration::from_secs(30)).await;
    cluster.wait_caught_up(2, Duration::from_secs(30)).await;
    assert_gateway_serves(&api, &ledger).await;
    assert_copy_equals(&cluster, 1, Role::Primary, &ledger).await;
    assert_copy_equals(&cluster, 1, Role::Replica, &ledger).await;
}

#[tokio::test]
async fn a_node_whose_disk_is_wiped_while_down_rebuilds_both_partitions() {
    let mut cluster = Cluster::start(PARTITIONS).await;
    let api = Api::of(&cluster);
    let ids = ids_by_partition("wiped", 10);
    let mut ledger = Ledger::default();

    eprintln!("== phase: 8 records in each partition, some updated");
    for p in &ids {
        for id in &p[..8] {
            ledger
                .write(&api, Write::create(user(id, "First", 1)))
                .await;
        }
        ledger
            .write(&api, Write::update(&p[0], json!({"group": 7})))
            .await;
    }

    eprintln!("== phase: kill -9 db-1 and wipe its data dir");
    cluster.node(1).kill9();
    cluster.node(1).wipe();
    assert!(!cluster.node(1).data_dir().exists());

    eprintln!("== phase: while it is down: updates, deletes and creates in every partition");
    for p in &ids {
        ledger
            .write(&api, Write::update(&p[1], json!({"name": "While wiped"})))
            .await;
        ledger.write(&api, Write::delete(&p[2])).await;
        ledger.write(&api, Write::delete(&p[3])).await;
        for id in &p[8..10] {
            ledger
                .write(&api, Write::create(user(id, "While wiped", 4)))
                .await;
        }
    }

    eprintln!("== phase: start db-1 on an empty disk; it rebuilds from the logs");
    cluster.node(1).start();
    cluster.wait_caught_up(1, Duration::from_secs(30)).await;

    eprintln!("== phase: its P1 primary and P0 replica copies equal what was acknowledged");
    assert_copy_equals(&cluster, 1, Role::Primary, &ledger).await;
    assert_copy_equals(&cluster, 0, Role::Replica, &ledger).await;
    assert_gateway_serves(&api, &ledger).await;
}

#[tokio::test]
async fn every_acknowledged_write_survives_a_whole_cluster_restart() {
    let mut cluster = Cluster::start(PARTITIONS).await;
    let api = Api::of(&cluster);
    let ids = ids_by_partition("restart", 10);
    let mut ledger = Ledger::default();

    eprintln!("== phase: create, update and delete in every partition");
    for p in &ids {
        for id in &p[..9] {
            ledger.write(&api, Write::create(user(id, "Kept", 1))).await;
        }
        for id in &p[..3] {
            ledger
                .write(&api, Write::update(id, json!({"name": "Kept, updated"})))
                .await;
        }
        ledger.write(&api, Write::delete(&p[8])).await;
    }
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        ends.push(cluster.log_end(p).await);
    }

    eprintln!("== phase: SIGTERM the gateway and every dbnode, then kill -9 NATS");
    let status = cluster.gateway().terminate().await;
    assert!(status.success(), "the gateway exits cleanly: {status}");
    for i in 0..PARTITIONS {
        let status = cluster.node(i).terminate().await;
        assert!(status.success(), "db-{i} exits cleanly: {status}");
    }
    cluster.nats().kill();

    eprintln!("== phase: start NATS on the same store, then the dbnodes, then the gateway");
    cluster.nats().restart().await;
    for i in 0..PARTITIONS {
        cluster.node(i).start();
    }
    for i in 0..PARTITIONS {
        cluster.wait_caught_up(i, Duration::from_secs(30)).await;
    }
    cluster.gateway().start();
    cluster.wait_ready().await;

    eprintln!("== phase: every acknowledged write is still there");
    for p in 0..PARTITIONS {
        assert_eq!(
            cluster.log_end(p).await,
            ends[p as usize],
            "the log of P{p} kept its end"
        );
    }
    assert_gateway_serves(&api, &ledger).await;
    for p in 0..PARTITIONS {
        assert_copy_equals(&cluster, p, Role::Primary, &ledger).await;
        assert_copy_equals(&cluster, p, Role::Replica, &ledger).await;
    }

    eprintln!("== phase: new writes continue each log's sequence");
    for (p, partition_ids) in ids.iter().enumerate() {
        let write = Write::create(user(&partition_ids[9], "After the restart", 5));
        let reply = write.send(&api).await.expect("a write after the restart");
        write.check(&reply);
        assert_eq!(reply.etag(), ends[p] + 1, "the next sequence of P{p}");
        ledger.ack(&write.id, &reply);
    }
    assert_gateway_serves(&api, &ledger).await;
}

#[tokio::test]
async fn reads_from_replicas_never_miss_the_gateways_own_writes() {
    let mut cluster = Cluster::builder()
        .read_from(ReadFrom::Replica)
        .start()
        .await;
    let api = Api::of(&cluster);

    eprintln!("== phase: 1,000 records: create → read and update → read, sequentially");
    let ids: Vec<String> = (0..1000).map(|i| format!("ryw-{i:04}")).collect();
    let started = Instant::now();
    let mut ledger = Ledger::default();
    let stale = write_read_pairs(&api, &ids, "Fresh", &mut ledger).await;
    eprintln!(
        "== measured: 2,000 write → read pairs in {:?}; stale reads: {}",
        started.elapsed(),
        stale.len()
    );
    assert!(stale.is_empty(), "stale reads: {stale:#?}");

    eprintln!("== phase: SIGSTOP db-2 (replica of P1); 200 pairs in P1 must fall back");
    let in_p1 = ids_by_partition("ryw-stalled", 200).swap_remove(1);
    let timeouts_before = nats_requests(&api, "get", "replica", "timeout").await;
    cluster.node(2).stop();
    let stale = write_read_pairs(&api, &in_p1[..100], "Stalled replica", &mut ledger).await;
    let fell_back = nats_requests(&api, "get", "replica", "timeout").await - timeouts_before;
    eprintln!(
        "== measured: 200 pairs with db-2 stopped; replica reads that timed out and fell back: \
         {fell_back}; stale reads: {}",
        stale.len()
    );
    assert!(stale.is_empty(), "stale reads: {stale:#?}");
    assert!(
        fell_back > 0,
        "the stopped replica was asked and the gateway fell back"
    );

    eprintln!("== phase: SIGCONT db-2; 200 more pairs while it catches up");
    cluster.node(2).cont();
    let stale = write_read_pairs(&api, &in_p1[100..], "Catching-up replica", &mut ledger).await;
    assert!(stale.is_empty(), "stale reads: {stale:#?}");

    eprintln!("== phase: db-2's replica of P1 converges");
    cluster.wait_caught_up(2, Duration::from_secs(30)).await;
    assert_copy_equals(&cluster, 1, Role::Replica, &ledger).await;
}

#[tokio::test]
async fn a_node_catches_up_10000_writes_made_while_it_was_down() {
    let mut cluster = Cluster::start(PARTITIONS).await;
    let api = Api::of(&cluster);

    eprintln!("== phase: SIGTERM db-1");
    let status = cluster.node(1).terminate().await;
    assert!(status.success(), "db-1 exits cleanly: {status}");

    eprintln!("== phase: 10,000 creates through the gateway, 16 at a time");
    let started = Instant::now();
    let writes = (0..10_000u32).map(|i| {
        let api = api.clone();
        async move {
            let write = Write::create(user(&format!("bulk-{i:05}"), "Bulk", i % 100));
            let mut failures = Failures::default();
            let reply = write_retried(&api, &write, &mut failures).await;
            (write, reply, failures)
        }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut ledger = Ledger::default();
    let mut failures = Failures::default();
    for (write, reply, failed) in results {
        let reply = reply.unwrap_or_else(|| panic!("{} failed twice", write.describe()));
        ledger.ack(&write.id, &reply);
        failures.merge(failed);
    }
    eprintln!(
        "== measured: 10,000 creates in {elapsed:?} ({:.0}/s), {} attempts retried",
        10_000.0 / elapsed.as_secs_f64(),
        failures.attempts.len()
    );
    let ends = [cluster.log_end(0).await, cluster.log_end(1).await];
    eprintln!(
        "== phase: db-1 is behind by P0 {} and P1 {} entries",
        ends[0], ends[1]
    );

    eprintln!("== phase: start db-1 and time its catch-up");
    let started = Instant::now();
    cluster.node(1).start();
    let copy = cluster.copy(1, Role::Primary).await;
    let probe = ledger
        .0
        .keys()
        .find(|id| partition(id) == 1)
        .unwrap()
        .clone();
    let serving = async {
        // db-1 subscribes to its request subjects only once it has caught up.
        eventually(Duration::from_secs(60), || {
            let copy = &copy;
            let probe = &probe;
            async move {
                let answered = tokio::time::timeout(Duration::from_millis(500), copy.get(probe));
                answered.await.ok().map(|_| ())
            }
        })
        .await;
        started.elapsed()
    };
    let caught_up = async {
        let presence = cluster.wait_caught_up(1, Duration::from_secs(60)).await;
        (started.elapsed(), presence)
    };
    let (serving, (caught_up, presence)) = tokio::join!(serving, caught_up);
    eprintln!(
        "== measured: db-1 caught up {} + {} entries: serving after {serving:?}, presence ready \
         with lag 0 and applied == log end after {caught_up:?} (heartbeats are 1 s apart)",
        ends[0], ends[1]
    );
    for part in &presence.partitions {
        assert_eq!(part.applied, ends[part.partition as usize], "{part:?}");
    }

    eprintln!("== phase: db-1 holds every record: 200 sampled from each of its copies");
    for (p, role) in [(1, Role::Primary), (0, Role::Replica)] {
        let records = ledger.in_partition(p);
        let sample = records.sample(records.0.len() / 200);
        assert!(sample.0.len() >= 200, "{} sampled", sample.0.len());
        assert_copy_holds(&cluster, p, role, &sample).await;
        assert_copy_count(&cluster, p, role, records.live()).await;
    }
}
