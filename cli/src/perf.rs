//! `ringstore check perf`: a bounded write and read load with a verdict, as `etcdctl check perf`
//! gives one. Clients create records of their own (`check-perf-…` ids) on every partition's
//! primary for a fixed time, straight over NATS (the dbnodes and the logs, not the gateway),
//! then read each back from its other copy at the version its create returned, then delete
//! them all. PASS when nothing failed, every record read back as written, the write rate is
//! at least `--min-rate` and the write p99 at most `--max-p99-ms`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{stream, StreamExt};
use protocol::{
    subjects, timing, GetRequest, Op, PartitionMap, ProtocolError, Reply, Response, Role, User,
    WriteKind, WriteRequest,
};
use serde::Serialize;

use crate::{ask, ASK_TIMEOUT};

#[derive(Debug, clap::Args)]
pub struct PerfArgs {
    /// How long the write load runs, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Writers at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// The lowest write rate (creates per second) that passes.
    #[arg(long, default_value_t = 200.0)]
    min_rate: f64,
    /// The highest write p99 (ms) that passes.
    #[arg(long, default_value_t = 1000.0)]
    max_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Verdict {
    writes: usize,
    seconds: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    failed_writes: usize,
    reads_verified: usize,
    reads_wrong: usize,
    deleted: usize,
    pass: bool,
    why: Vec<String>,
}

async fn write(
    client: &async_nats::Client,
    map: &PartitionMap,
    kind: WriteKind,
) -> anyhow::Result<u64> {
    let (id, op) = (kind.id().to_owned(), kind.op());
    let request = WriteRequest {
        request_id: format!("check-perf-{}", uuid::Uuid::new_v4().simple()),
        deadline: timing::deadline_in(ASK_TIMEOUT),
        kind,
    };
    let subject = subjects::primary(map.partition_of(&id), op);
    let response = ask(client, subject, &request).await?;
    match response.answer {
        Ok(reply) => Ok(reply.version().unwrap_or(response.seen)),
        Err(e) => bail!("{id}: {e}"),
    }
}

/// Reads `user` back from its partition's other copy (the primary on a ring of one) at
/// `version`; true when it is what was written.
async fn read_back(
    client: &async_nats::Client,
    map: &PartitionMap,
    user: &User,
    version: u64,
) -> bool {
    let p = map.partition_of(&user.id);
    let role = if map.replica(p).is_some() {
        Role::Replica
    } else {
        Role::Primary
    };
    let request = GetRequest {
        id: user.id.clone(),
        min_seq: version,
        epoch: 0,
        deadline: timing::deadline_in(ASK_TIMEOUT),
    };
    // A copy that has not applied `version` yet says so (it waits only briefly): ask again,
    // as the gateway would, until the read's own budget is spent.
    let until = Instant::now() + ASK_TIMEOUT;
    loop {
        let subject = subjects::request(p, role, Op::Get);
        match ask(client, subject, &request).await {
            Ok(Response {
                answer: Ok(Reply::User(found)),
                ..
            }) => return found.user == *user,
            Ok(Response {
                answer: Err(ProtocolError::Behind { .. }),
                ..
            }) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => return false,
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// One writer: creates records until `until`; returns what it wrote and each write's latency.
async fn writer(
    client: &async_nats::Client,
    map: &PartitionMap,
    run: &str,
    n: u64,
    until: Instant,
) -> (Vec<(User, u64)>, Vec<Duration>, usize) {
    let (mut written, mut latencies, mut failed) = (Vec::new(), Vec::new(), 0);
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        let user = User {
            id: format!("check-perf-{run}-{n}-{k}"),
            name: "check perf".into(),
            email: "check-perf@example.com".into(),
            group: (k % 16) as u32,
        };
        let started = Instant::now();
        match write(client, map, WriteKind::Create { user: user.clone() }).await {
            Ok(version) => {
                latencies.push(started.elapsed());
                written.push((user, version));
            }
            Err(_) => failed += 1,
        }
    }
    (written, latencies, failed)
}

/// Reads every written record back and deletes it again: (read back as written, deleted).
async fn check_and_clean(
    client: &async_nats::Client,
    map: &PartitionMap,
    written: &[(User, u64)],
    concurrency: usize,
) -> (usize, usize) {
    let checks = stream::iter(written)
        .map(|(user, version)| read_back(client, map, user, *version))
        .buffer_unordered(concurrency)
        .collect::<Vec<bool>>()
        .await;
    let deletes = stream::iter(written)
        .map(|(user, _)| {
            let kind = WriteKind::Delete {
                id: user.id.clone(),
                if_match: None,
            };
            write(client, map, kind)
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    (
        checks.iter().filter(|ok| **ok).count(),
        deletes.iter().filter(|d| d.is_ok()).count(),
    )
}

impl Verdict {
    /// Judges the figures against `args`' bars.
    fn judge(mut self, args: &PerfArgs) -> Self {
        if self.failed_writes > 0 {
            self.why
                .push(format!("{} writes failed", self.failed_writes));
        }
        if self.reads_wrong > 0 {
            let wrong = self.reads_wrong;
            self.why
                .push(format!("{wrong} records did not read back as written"));
        }
        if self.rate < args.min_rate {
            let (rate, min) = (self.rate, args.min_rate);
            self.why
                .push(format!("{rate:.0} writes/s is below {min:.0}"));
        }
        if self.p99_ms > args.max_p99_ms {
            let (p99, max) = (self.p99_ms, args.max_p99_ms);
            self.why
                .push(format!("p99 {p99:.1} ms is above {max:.0} ms"));
        }
        self.pass = self.why.is_empty();
        self
    }

    fn print(&self) {
        println!(
            "{} writes in {:.1} s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed",
            self.writes,
            self.seconds,
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.failed_writes
        );
        println!(
            "{} of {} read back as written from their other copy; {} deleted again",
            self.reads_verified, self.writes, self.deleted
        );
        match self.pass {
            true => println!("PASS"),
            false => println!("FAIL: {}", self.why.join("; ")),
        }
    }
}

/// `ringstore check perf`.
pub async fn run(client: &async_nats::Client, args: &PerfArgs, json: bool) -> anyhow::Result<bool> {
    let (map, _) = runtime::map::read(client)
        .await
        .context("reading the partition map")?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    eprintln!(
        "check perf: {} writers for {} s over {} partitions",
        args.clients,
        args.seconds,
        map.count()
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let writers = (0..args.clients).map(|n| writer(client, &map, &run, n, until));
    let results = futures::future::join_all(writers).await;
    let seconds = started.elapsed().as_secs_f64();
    let (mut written, mut latencies, mut failed) = (Vec::new(), Vec::new(), 0);
    for (w, l, f) in results {
        written.extend(w);
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    let (reads_verified, deleted) =
        check_and_clean(client, &map, &written, args.clients as usize).await;
    let verdict = Verdict {
        writes: written.len(),
        seconds,
        rate: written.len() as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        failed_writes: failed,
        reads_verified,
        reads_wrong: written.len() - reads_verified,
        deleted,
        pass: false,
        why: Vec::new(),
    }
    .judge(args);
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        verdict.print();
    }
    Ok(verdict.pass)
}
