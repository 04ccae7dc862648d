//! Jepsen-style linearizability tests (docs/design.md "Consistency guarantee"), against real
//! processes: six clients make creates, reads, updates, `If-Match` updates and deletes of six
//! records (18 or 36 on the NATS cluster) through one gateway (`REQUEST_TIMEOUT_MS=1000`)
//! while a nemesis injects one kind of fault — kill -9 and restart, SIGSTOP/SIGCONT of a
//! primary or of a replica, pauses longer than the request timeout and than JetStream's
//! duplicate window, NATS restarts, and kill -9 or a 6 s SIGSTOP of one server of a 3-server
//! NATS cluster whose logs are replicated on all three. Every operation's invocation, completion and
//! outcome is recorded (a timeout or 5xx is "unknown": it may or may not have happened; a
//! client waits out a `Retry-After` before its next request), and
//! the history of each record is checked for linearizability against a register-with-CAS
//! model (`integration_tests::checker`).
//!
//! Each nemesis runs `LIN_SECONDS` seconds (default 25; `LIN_SECONDS=600` is the long run).
//! `KEEP_CLUSTER=1` keeps the logs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::checker::{check, Verdict};
use integration_tests::history::{Call, Outcome, Recorder};
use integration_tests::Cluster;
use protocol::partition::partition_of;
use tokio::time::{sleep, Instant};

/// Records the clients work on.
const KEYS: usize = 6;
/// Records the clients work on under the NATS-cluster nemeses: a NATS election (4–9 s)
/// leaves about a hundred writes without an answer, each possibly applied, and with six
/// records so many open writes on one record can make the checker's search explode (a CI run
/// did not finish in 300 s); spread over more records, each record's search stays small.
const KEYS_ON_A_NATS_CLUSTER: usize = 18;
/// Records the clients work on under [`Nemesis::NatsServerPause`]: while the server a client
/// is connected to is paused, every request it sends fails without a definite answer (400
/// unknown outcomes in one run of 25 s, whose check took 18 s on eighteen records). The search
/// grows exponentially with a record's open writes; since clients honour `Retry-After`
/// ([`Recorder::perform`]) a run has about a hundred, a few per record here.
const KEYS_UNDER_NATS_PAUSES: usize = 36;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// The partition every record is in: db-1 is its primary, db-2 its replica.
const PARTITION: u32 = 1;
/// The gateway's request budget.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// One kind of fault.
#[derive(Debug, Clone, Copy)]
enum Nemesis {
    /// kill -9 of the partition's primary or replica, restarted 1.5 s later.
    Kill9,
    /// SIGSTOP of the primary for 3 s.
    PausePrimary,
    /// SIGSTOP of the replica for 3 s.
    PauseReplica,
    /// SIGSTOP of the primary or the replica for 4 s: past the request timeout and past the
    /// duplicate window (2 s in this test).
    LongPause,
    /// kill -9 of nats-server, restarted 1 s later.
    NatsRestart,
    /// On a 3-server NATS cluster with R3 logs: kill -9 of one server (a log's leader or
    /// a follower), restarted 3 s later.
    NatsServerKill,
    /// On a 3-server NATS cluster with R3 logs: SIGSTOP of one server for 6 s, past its
    /// peers' election timeout, so that a paused log leader resumes deposed without knowing it.
    NatsServerPause,
}

/// A small deterministic generator (xorshift), seeded per run and printed, so a failing run
/// can be told apart from another.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn seconds() -> u64 {
    std::env::var("LIN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25)
}

fn keys(count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("lin-{i}"))
        .filter(|id| partition_of(id, 3) == PARTITION)
        .take(count)
        .collect()
}

/// One client: random operations on random records until `stop`.
async fn client(
    recorder: Recorder,
    http: reqwest::Client,
    base: String,
    client: usize,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    records: usize,
) {
    let keys = keys(records);
    let mut versions = vec![0u64; keys.len()];
    let mut counter = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.next(keys.len() as u64) as usize;
        counter += 1;
        let name = format!("c{client}-{counter}");
        let call = match rng.next(100) {
            0..=34 => Call::Read,
            35..=49 => Call::Create(name),
            50..=69 => Call::Update(name),
            70..=84 => Call::Cas(versions[k], name),
            _ => Call::Delete,
        };
        match recorder.perform(&http, &base, client, &keys[k], call).await {
            Outcome::Read(Some((_, version))) => versions[k] = version,
            Outcome::Written(version) if version > 0 => versions[k] = version,
            _ => {}
        }
    }
}

async fn run(nemesis: Nemesis) {
    let seconds = seconds();
    let seed = (protocol::timing::now_ms() | 1) ^ 0x9e37_79b9_7f4a_7c15;
    let dedupe = match nemesis {
        Nemesis::LongPause => 2,
        _ => 120,
    };
    let servers = match nemesis {
        Nemesis::NatsServerKill | Nemesis::NatsServerPause => 3,
        _ => 1,
    };
    let mut cluster = Cluster::builder()
        .request_timeout(REQUEST_TIMEOUT)
        .dbnode_env("DUPLICATE_WINDOW_SECS", dedupe)
        .nats_servers(servers)
        .start()
        .await;
    let records = match nemesis {
        Nemesis::NatsServerKill => KEYS_ON_A_NATS_CLUSTER,
        Nemesis::NatsServerPause => KEYS_UNDER_NATS_PAUSES,
        _ => KEYS,
    };
    eprintln!("== {nemesis:?}: {CLIENTS} clients on {records} records of P{PARTITION} for {seconds} s, seed {seed}");

    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut auth = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", cluster.api_key().key);
    auth.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(auth)
        .build()
        .expect("an HTTP client");
    let mut rng = Rng(seed);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let seed = Rng(rng.next(u64::MAX) | 1);
            tokio::spawn(client(
                recorder.clone(),
                http.clone(),
                cluster.base_url(),
                c,
                seed,
                stop.clone(),
                records,
            ))
        })
        .collect();

    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let faults = AtomicU64::new(0);
    while Instant::now() + Duration::from_secs(5) < end {
        sleep(Duration::from_millis(1000 + rng.next(1500))).await;
        let primary = 1;
        let replica = 2;
        let either = if rng.next(2) == 0 { primary } else { replica };
        faults.fetch_add(1, Ordering::Relaxed);
        match nemesis {
            Nemesis::Kill9 => {
                eprintln!("== nemesis: kill -9 db-{either}");
                cluster.node(either).kill9();
                sleep(Duration::from_millis(1500)).await;
                cluster.node(either).start();
                cluster.wait_node_ready(either).await;
            }
            Nemesis::PausePrimary | Nemesis::PauseReplica | Nemesis::LongPause => {
                let (node, pause) = match nemesis {
                    Nemesis::PausePrimary => (primary, 3000),
                    Nemesis::PauseReplica => (replica, 3000),
                    _ => (either, 4000),
                };
                eprintln!("== nemesis: SIGSTOP db-{node} for {pause} ms");
                cluster.node(node).stop();
                sleep(Duration::from_millis(pause)).await;
                cluster.node(node).cont();
            }
            Nemesis::NatsRestart => {
                eprintln!("== nemesis: kill -9 nats-server, restart it 1 s later");
                cluster.nats().kill();
                sleep(Duration::from_millis(1000)).await;
                cluster.nats().restart().await;
            }
            Nemesis::NatsServerKill => {
                let server = rng.next(3) as usize;
                eprintln!(
                    "== nemesis: kill -9 nats-{server} of the NATS cluster, restart it 3 s later"
                );
                cluster.nats_server(server).kill();
                sleep(Duration::from_millis(3000)).await;
                cluster.nats_server(server).restart().await;
            }
            Nemesis::NatsServerPause => {
                let server = rng.next(3) as usize;
                eprintln!("== nemesis: SIGSTOP nats-{server} of the NATS cluster for 6 s");
                cluster.nats_server(server).pause();
                sleep(Duration::from_millis(6000)).await;
                cluster.nats_server(server).resume();
            }
        }
    }
    sleep(end.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client task");
    }
    let elapsed = started.elapsed();

    let history = recorder.operations();
    let count = |f: &dyn Fn(&Outcome) -> bool| history.iter().filter(|op| f(&op.outcome)).count();
    let ok = count(&|o| matches!(o, Outcome::Written(_) | Outcome::Read(_)));
    let refused = count(&|o| matches!(o, Outcome::Refused(_)));
    let unknown = count(&|o| matches!(o, Outcome::Unknown));
    let checking = std::time::Instant::now();
    let verdict = check(&history);
    eprintln!(
        "== {nemesis:?}: {} operations in {:.1} s ({ok} ok, {refused} refused, {unknown} unknown), \
         {} faults; checked in {:.2} s: {}",
        history.len(),
        elapsed.as_secs_f64(),
        faults.load(Ordering::Relaxed),
        checking.elapsed().as_secs_f64(),
        match &verdict {
            Verdict::Linearizable => "linearizable".to_owned(),
            Verdict::Violations(v) => format!("{} records NOT linearizable", v.len()),
            Verdict::Inconclusive(key) => format!("inconclusive on {key}"),
        }
    );
    match verdict {
        Verdict::Linearizable => {}
        Verdict::Violations(violations) => {
            for v in &violations {
                eprintln!("---- record {:?} ----\n{}", v.key, v.report);
            }
            panic!(
                "{} of {records} records have non-linearizable histories (seed {seed})",
                violations.len()
            );
        }
        Verdict::Inconclusive(key) => panic!("the checker gave up on {key} (seed {seed})"),
    }
    assert!(
        faults.load(Ordering::Relaxed) >= 1,
        "the nemesis injected no fault"
    );
    assert!(
        ok + refused >= 100,
        "too few definite operations to mean anything: {ok} + {refused}"
    );
}

#[tokio::test]
async fn linearizable_under_kill_9_and_restarts() {
    run(Nemesis::Kill9).await;
}

#[tokio::test]
async fn linearizable_under_pauses_of_the_primary() {
    run(Nemesis::PausePrimary).await;
}

#[tokio::test]
async fn linearizable_under_pauses_of_the_replica() {
    run(Nemesis::PauseReplica).await;
}

#[tokio::test]
async fn linearizable_under_pauses_past_the_duplicate_window() {
    run(Nemesis::LongPause).await;
}

#[tokio::test]
async fn linearizable_under_nats_restarts() {
    run(Nemesis::NatsRestart).await;
}

#[tokio::test]
async fn linearizable_under_nats_server_kills_on_a_nats_cluster() {
    run(Nemesis::NatsServerKill).await;
}

#[tokio::test]
async fn linearizable_under_nats_server_pauses_on_a_nats_cluster() {
    run(Nemesis::NatsServerPause).await;
}
