//! ringstore on a 3-server NATS cluster with Raft-replicated logs (`STREAM_REPLICAS=3`): under
//! a steady write load, kill -9 of the server that leads a partition's log, kill -9 of a
//! server that only follows, a server paused past its peers' and clients' heartbeats, and
//! all three servers restarted. No acknowledged write is lost, no dbnode or gateway is
//! restarted, and each drill's unavailability is measured and printed (the README's figures
//! come from these lines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use integration_tests::{client, eventually, Cluster};
use protocol::partition::partition_of;
use protocol::{subjects, Role};
use serde_json::json;
use tokio::time::Instant;

const SERVERS: usize = 3;
/// How long drill 3 pauses a server: longer than a log's re-election, so that every
/// partition must be writable again while it is still paused.
const PAUSE: Duration = Duration::from_secs(15);

/// An acknowledged create: the record, its partition, its version, when it was sent and
/// when it was answered.
#[derive(Debug, Clone)]
struct Ack {
    id: String,
    partition: u32,
    version: u64,
    sent: Instant,
    answered: Instant,
}

/// Writers creating fresh records through the gateway until stopped.
struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    refused: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, writers: usize) -> Load {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|w| {
                let http = client(Some(&cluster.api_key().key));
                let url = cluster.url("/api/user");
                let (acks, refused, stop) = (acks.clone(), refused.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("w{w}-{n}");
                        let body =
                            json!({"id": id, "name": "Load", "email": "l@example.com", "group": 1});
                        let sent = Instant::now();
                        // Keyed, as a careful client writes: the key bucket must survive too.
                        let answer = http
                            .post(&url)
                            .header("Idempotency-Key", format!("load-{id}"))
                            .json(&body)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        match answer {
                            Ok(r) if r.status() == 201 => {
                                let version = integration_tests::etag(&r);
                                acks.lock().unwrap().push(Ack {
                                    partition: partition_of(&id, 3),
                                    id,
                                    version,
                                    sent,
                                    answered: Instant::now(),
                                });
                            }
                            // 503/504 or no answer: not acknowledged; try the next record
                            // after a breath so that an outage is not a busy loop.
                            _ => {
                                *refused.lock().unwrap() += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            acks,
            refused,
            stop,
            tasks,
        }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Waits until every partition has an acknowledged write sent after `since`; returns,
    /// per partition, when the first such write was answered.
    async fn resumed_after(&self, since: Instant) -> BTreeMap<u32, Instant> {
        eventually(Duration::from_secs(60), || async {
            let mut first = BTreeMap::new();
            for ack in self.acks().into_iter().filter(|a| a.sent > since) {
                let at = first.entry(ack.partition).or_insert(ack.answered);
                *at = (*at).min(ack.answered);
            }
            (first.len() == 3).then_some(first)
        })
        .await
    }

    /// The longest time between two consecutive acknowledgements of partition `p` answered
    /// in `[from, to]`.
    fn longest_gap(&self, p: u32, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .acks()
            .into_iter()
            .filter(|a| a.partition == p && a.answered >= from && a.answered <= to)
            .map(|a| a.answered)
            .collect();
        times.sort();
        times.insert(0, from);
        times.push(to);
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    async fn stop(self) -> (Vec<Ack>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let refused = *self.refused.lock().unwrap();
        (self.acks.lock().unwrap().clone(), refused)
    }
}

/// Where partition `p`'s log is led from, and whether its followers are current.
async fn placement(js: &jetstream::Context, p: u32) -> Option<(String, bool)> {
    stream_placement(js, &subjects::stream_name(p)).await
}

/// The stream behind the Idempotency-Key bucket (JetStream names a bucket's stream `KV_<bucket>`).
fn key_bucket_stream() -> String {
    format!("KV_{}", subjects::IDEMPOTENCY_BUCKET)
}

/// Where stream `name` is led from, and whether its followers are current.
async fn stream_placement(js: &jetstream::Context, name: &str) -> Option<(String, bool)> {
    let mut stream = js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    let cluster = info.cluster.clone()?;
    let leader = cluster.leader?;
    let current = cluster.replicas.len() == SERVERS - 1
        && cluster.replicas.iter().all(|r| r.current && !r.offline);
    Some((leader, current))
}

/// Waits until every log, and the Idempotency-Key bucket, has a leader and two current
/// followers; returns the logs' leaders.
async fn healthy(js: &jetstream::Context) -> Vec<String> {
    let keys = key_bucket_stream();
    eventually(Duration::from_secs(60), || async {
        stream_placement(js, &keys)
            .await
            .filter(|(_, current)| *current)?;
        let mut leaders = Vec::new();
        for p in 0..3 {
            match placement(js, p).await {
                Some((leader, true)) => leaders.push(leader),
                _ => return None,
            }
        }
        Some(leaders)
    })
    .await
}

async fn leaders_now(js: &jetstream::Context) -> Vec<Option<String>> {
    let mut leaders = Vec::new();
    for p in 0..3 {
        leaders.push(placement(js, p).await.map(|(leader, _)| leader));
    }
    leaders
}

/// Moves the leadership of every stream that server `victim` leads (a log or the key bucket)
/// to another server (`$JS.API.STREAM.LEADER.STEPDOWN`), so that it is a follower only.
async fn follower_only(admin: &async_nats::Client, js: &jetstream::Context, victim: usize) {
    let me = format!("nats-{victim}");
    let mut streams: Vec<String> = (0..3).map(subjects::stream_name).collect();
    streams.push(key_bucket_stream());
    for stream in streams {
        eventually(Duration::from_secs(30), || async {
            let (leader, _) = stream_placement(js, &stream).await?;
            if leader != me {
                return Some(());
            }
            let stepdown = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
            let _ = admin.request(stepdown, "".into()).await;
            None
        })
        .await;
    }
    healthy(js).await;
    eprintln!(
        "== nats-{victim} leads nothing now: {:?}",
        leaders_now(js).await
    );
}

/// When stream `name` got a leader other than `old`, by the servers' own clock (this host's).
async fn elected_after(js: &jetstream::Context, name: &str, old: &str) -> std::time::SystemTime {
    eventually(Duration::from_secs(30), || async {
        let mut stream = js.get_stream(name).await.ok()?;
        let cluster = stream.info().await.ok()?.cluster.clone()?;
        let since = cluster.leader_since?;
        (cluster.leader? != old).then(|| since.into())
    })
    .await
}

/// The NATS server the gateway is connected to now: the port of the last connection the
/// client library logged ("connected successfully server=<port>").
fn gateway_server(cluster: &mut Cluster) -> usize {
    let log = std::fs::read_to_string(cluster.gateway().log_path()).expect("the gateway's log");
    let port: u16 = log
        .lines()
        .rev()
        .find_map(|line| {
            let (_, rest) = line.split_once("connected successfully server=")?;
            let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse().ok()
        })
        .expect("the gateway's log names the server it connected to");
    (0..cluster.nats_servers())
        .find(|&i| cluster.nats_server(i).port() == port)
        .unwrap_or_else(|| panic!("the gateway is connected to port {port}, no server of ours"))
}

fn index_of(server: &str) -> usize {
    server
        .strip_prefix("nats-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("a harness server name: {server}"))
}

/// Reads every acknowledged record back through the gateway: each must be there with the
/// version its create was acknowledged with.
async fn verify(cluster: &Cluster, acks: &[Ack], after: &str) {
    use futures::StreamExt;
    let http = client(Some(&cluster.api_key().key));
    let lost: Vec<String> = futures::stream::iter(acks)
        .map(|ack| {
            let url = cluster.url(&integration_tests::user_path(&ack.id));
            let http = http.clone();
            async move {
                // A 503 is "not now" (a copy still catching up), not an answer: ask again.
                let deadline = Instant::now() + Duration::from_secs(20);
                let response = loop {
                    let response = http.get(&url).send().await.expect("the gateway answers");
                    if !response.status().is_server_error() || Instant::now() > deadline {
                        break response;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                let status = response.status();
                if status != 200 {
                    return Some(format!(
                        "{} (P{} v{}): {status}",
                        ack.id, ack.partition, ack.version
                    ));
                }
                let version = integration_tests::etag(&response);
                (version != ack.version).then(|| {
                    format!(
                        "{} (P{} v{}): v{version}",
                        ack.id, ack.partition, ack.version
                    )
                })
            }
        })
        .buffer_unordered(16)
        .filter_map(|lost| async { lost })
        .collect()
        .await;
    assert!(
        lost.is_empty(),
        "after {after}: {} of {} acknowledged writes lost or changed, e.g. {:?}",
        lost.len(),
        acks.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "== after {after}: all {} acknowledged writes read back",
        acks.len()
    );
}

/// When the first P0 write sent after a fault was read back, counted from its
/// acknowledgement: through the gateway, and from each copy of P0 asked directly.
struct ReadBack {
    gateway: Duration,
    primary: Duration,
    replica: Duration,
}

/// Watches, from `since` on, for the first P0 write sent after `since` to be acknowledged, and
/// then reads it back until it is there: through the gateway (until then only 503, "this copy
/// is behind", is acceptable) and from each copy of P0 directly (which answers 404 until it
/// has applied the write).
async fn read_back_after(
    cluster: &Cluster,
    load: &Load,
    since: Instant,
) -> tokio::task::JoinHandle<ReadBack> {
    let http = client(Some(&cluster.api_key().key));
    let base = cluster.url("");
    let acks = load.acks.clone();
    let primary = cluster.copy(0, Role::Primary).await;
    let replica = cluster.copy(0, Role::Replica).await;
    tokio::spawn(async move {
        let first = eventually(Duration::from_secs(60), || async {
            let acks = acks.lock().unwrap();
            acks.iter()
                .filter(|a| a.partition == 0 && a.sent > since)
                .min_by_key(|a| a.answered)
                .cloned()
        })
        .await;
        let url = format!("{base}{}", integration_tests::user_path(&first.id));
        let through_gateway = eventually(Duration::from_secs(30), || async {
            let response = http.get(&url).send().await.ok()?;
            let status = response.status();
            assert!(
                status == 200 || status == 503,
                "{} (P0 v{}) read back as {status}",
                first.id,
                first.version
            );
            (status == 200).then(Instant::now)
        });
        let from_copy = |copy: integration_tests::CopyReader| {
            let id = first.id.clone();
            async move {
                eventually(Duration::from_secs(30), || async {
                    copy.get(&id).await.is_ok().then(Instant::now)
                })
                .await
            }
        };
        let (gateway, primary, replica) =
            tokio::join!(through_gateway, from_copy(primary), from_copy(replica));
        let after = |at: Instant| at.saturating_duration_since(first.answered);
        ReadBack {
            gateway: after(gateway),
            primary: after(primary),
            replica: after(replica),
        }
    })
}

/// Waits until acknowledgements of every partition keep coming again.
async fn steady(load: &Load) {
    load.resumed_after(Instant::now()).await;
}

#[tokio::test]
async fn losing_any_one_nats_server_loses_no_acknowledged_write() {
    let mut cluster = Cluster::builder().nats_servers(SERVERS).start().await;
    let admin = cluster.nats_client().await;
    let js = jetstream::new(admin.clone());
    let leaders = healthy(&js).await;
    eprintln!("== logs led by {leaders:?}");
    let load = Load::start(&cluster, 6);
    steady(&load).await;

    eprintln!("== drill 1: kill -9 the server leading P0's log");
    let victim = index_of(&leaders[0]);
    // A keyed write needs the key bucket too: when the victim leads it as well, P0's writes
    // wait for the later of the two elections (they are independent, 4-9 s each).
    let keys = key_bucket_stream();
    let keys_led = stream_placement(&js, &keys).await.map(|(l, _)| l) == Some(leaders[0].clone());
    let killed = Instant::now();
    let killed_wall = std::time::SystemTime::now();
    cluster.nats_server(victim).kill();
    let read_back = read_back_after(&cluster, &load, killed).await;
    let mut needed = vec![subjects::stream_name(0)];
    if keys_led {
        needed.push(keys);
    }
    let mut elected = killed_wall;
    for stream in &needed {
        let at = elected_after(&js, stream, &leaders[0]).await;
        eprintln!(
            "MEASURED leader kill: {stream} elected a new leader {:.2} s after the kill",
            at.duration_since(killed_wall)
                .unwrap_or_default()
                .as_secs_f64()
        );
        elected = elected.max(at);
    }
    let election = elected.duration_since(killed_wall).unwrap_or_default();
    let resumed = load.resumed_after(killed).await;
    let p0 = resumed[&0] - killed;
    eprintln!(
        "MEASURED leader kill: every log a keyed P0 write needs had a new leader {:.2} s after \
         the kill; P0 writes acknowledged again {:.2} s after the kill, {:.2} s after that",
        election.as_secs_f64(),
        p0.as_secs_f64(),
        p0.saturating_sub(election).as_secs_f64(),
    );
    assert!(
        // Target 1 s; a client that was connected to the killed server first reconnects and
        // its request in flight times out (half the 2 s budget): up to 1.5 s seen in CI.
        p0.saturating_sub(election) <= Duration::from_secs(2),
        "P0 writes resumed {:?} after the logs it needs had new leaders",
        p0.saturating_sub(election)
    );
    let lag = read_back.await.expect("the read-back watcher");
    eprintln!(
        "MEASURED leader kill: P0's first write acknowledged after the kill read back {:.2} s \
         after its acknowledgement through the gateway; held by P0's primary after {:.2} s, by \
         its replica after {:.2} s",
        lag.gateway.as_secs_f64(),
        lag.primary.as_secs_f64(),
        lag.replica.as_secs_f64(),
    );
    let slowest = lag.gateway.max(lag.primary).max(lag.replica);
    assert!(
        // The copies' log consumers may have lived on the killed server; one that waits for
        // its own missed-heartbeat timeout leaves its copy behind for 5 s and more.
        slowest <= Duration::from_secs(3),
        "an acknowledged P0 write was missing from a copy for {slowest:?}: the copies did \
         not resume tailing"
    );
    cluster.nats_server(victim).restart().await;
    healthy(&js).await;
    steady(&load).await;
    verify(&cluster, &load.acks(), "drill 1").await;

    eprintln!(
        "== drill 2: kill -9 the server the gateway is connected to, once it leads nothing \
         (leaderships moved off it first)"
    );
    // The gateway's requests in flight there are lost with the connection: the worst case
    // for a follower's death (2 s stalls of every keyed write were seen in CI when a key
    // bucket operation waited out its whole budget).
    let victim = gateway_server(&mut cluster);
    follower_only(&admin, &js, victim).await;
    let killed = Instant::now();
    cluster.nats_server(victim).kill();
    let resumed = load.resumed_after(killed).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a window to measure gaps in
    let window_end = Instant::now();
    for p in 0..3 {
        let gap = load.longest_gap(p, killed, window_end);
        eprintln!(
            "MEASURED follower kill (nats-{victim}): P{p} longest pause between acknowledged \
             writes {:.2} s (first after the kill {:.2} s)",
            gap.as_secs_f64(),
            (resumed[&p] - killed).as_secs_f64()
        );
        assert!(
            // Target 1 s. The gateway (and any dbnode) connected to the killed server loses
            // the request or reply it had in flight there: the gateway waits out that
            // attempt's share of its 2 s budget (1 s) before sending it again, to the other
            // copy for a partition call, to the key bucket again for a key operation.
            gap <= Duration::from_secs(2),
            "P{p} stalled {gap:?} when a follower of its log died"
        );
    }
    cluster.nats_server(victim).restart().await;
    healthy(&js).await;
    steady(&load).await;
    verify(&cluster, &load.acks(), "drill 2").await;

    eprintln!("== drill 3: SIGSTOP a server for {PAUSE:?} (past every heartbeat), then SIGCONT");
    let victim = 1;
    let me = format!("nats-{victim}");
    let before = leaders_now(&js).await;
    let keys = key_bucket_stream();
    let keys_led = stream_placement(&js, &keys).await.map(|(l, _)| l) == Some(me.clone());
    let paused = Instant::now();
    cluster.nats_server(victim).pause();
    let resumed = load.resumed_after(paused + Duration::from_millis(10)).await;
    for (p, at) in &resumed {
        let led = before[*p as usize].as_deref() == Some(me.as_str()) || keys_led;
        let after = *at - paused;
        eprintln!(
            "MEASURED pause of {me} (leading the key bucket: {keys_led}): P{p} (log led by \
             {}) acknowledged a write sent after the pause {:.2} s after it",
            before[*p as usize].as_deref().unwrap_or("?"),
            after.as_secs_f64()
        );
        // A paused leader is a lost one: its stream waits for an election (4-9 s). Otherwise
        // only clients of the paused server wait, until they leave it (~3 s), and then the
        // request they had in flight times out and is retried: 1.0-4.3 s measured, once 6.1 s
        // in a CI run. Once 8.04 s: a client that reconnected to the paused server first waited
        // out the library's 5 s handshake timeout there (now runtime::nats::CONNECT_TIMEOUT).
        let limit = if led { PAUSE } else { Duration::from_secs(8) };
        assert!(after < limit, "P{p} waited {after:?} during the pause");
    }
    tokio::time::sleep(PAUSE.saturating_sub(paused.elapsed())).await; // the drill's length
    cluster.nats_server(victim).resume();
    healthy(&js).await;
    steady(&load).await;
    verify(&cluster, &load.acks(), "drill 3").await;

    eprintln!("== drill 4: kill -9 all three servers, start them again");
    let stopped = Instant::now();
    for i in 0..SERVERS {
        cluster.nats_server(i).kill();
    }
    for i in 0..SERVERS {
        cluster.nats_server(i).restart().await;
    }
    let resumed = load.resumed_after(stopped).await;
    let worst = resumed.values().map(|at| *at - stopped).max().unwrap();
    eprintln!(
        "MEASURED full restart: writes of every partition acknowledged again {:.2} s after \
         the kill",
        worst.as_secs_f64()
    );
    healthy(&js).await;
    steady(&load).await;

    let (acks, refused) = load.stop().await;
    eprintln!(
        "== {} writes acknowledged, {refused} refused or unanswered",
        acks.len()
    );
    verify(&cluster, &acks, "drill 4").await;
    no_copy_was_rebuilt(&cluster);
}

/// No log was ever recreated here, so a copy that started over from the log did it on a
/// wrong reading of the log's state: a server that sees no leader (restarted, or just resumed)
/// answers the log's info from its own stale copy. A rebuild costs a full replay of the log,
/// with the copy unreadable meanwhile.
fn no_copy_was_rebuilt(cluster: &Cluster) {
    for node in 0..3 {
        let path = cluster.logs_dir().join(format!("db-{node}.log"));
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let rebuilds: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("the log is not the one this copy was applied from"))
            .collect();
        assert!(
            rebuilds.is_empty(),
            "db-{node} rebuilt a copy from an unchanged log:\n{}",
            rebuilds.join("\n")
        );
    }
}
