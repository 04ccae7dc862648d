//! `list_walk`: a benchmark of LIST and COUNT (not a test).
//!
//! Preloads `USERS` users (default 100 000) through the gateway with `CONCURRENCY` creates in
//! flight (default 64), then times one full walk of `GET /api/users` at `LIMIT` (default
//! 1000) and `COUNT_RUNS` calls of `GET /api/users/count`, and prints a table.
//!
//! Against a fresh cluster of real processes (nats-server, three dbnodes, a gateway) started
//! with the test harness from `$RINGSTORE_BIN_DIR` (else the directory of this binary):
//!
//! ```sh
//! bench/list-walk      # builds in release, then runs target/release/list_walk
//! ```
//!
//! Or against a running gateway: `BASE_URL=http://localhost:3001 target/release/list_walk`
//! (the walk and the count then also include whatever the store already held).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use integration_tests::Cluster;
use serde::Deserialize;
use serde_json::json;

/// A page of `GET /api/users`.
#[derive(Deserialize)]
struct Page {
    items: Vec<protocol::User>,
    next_cursor: Option<String>,
}

/// `GET /api/users/count`.
#[derive(Deserialize)]
struct Count {
    count: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={value:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let users: usize = env_or("USERS", 100_000)?;
    let concurrency: usize = env_or("CONCURRENCY", 64)?;
    let limit: u32 = env_or("LIMIT", 1000)?;
    let count_runs: usize = env_or("COUNT_RUNS", 10)?;

    // Keeps the cluster (if we started one) alive until the end; dropping it kills it.
    let (base_url, _cluster) = match std::env::var("BASE_URL") {
        Ok(url) => (url.trim_end_matches('/').to_owned(), None),
        Err(_) => {
            let cluster = Cluster::builder()
                .request_timeout(Duration::from_secs(5))
                .start()
                .await;
            (cluster.base_url(), Some(cluster))
        }
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let before = count(&http, &base_url).await?;

    eprintln!("== preload: {users} users, {concurrency} in flight, against {base_url}");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..users)
        .map(|i| {
            let http = &http;
            let url = format!("{base_url}/api/user");
            let body = json!({
                "id": format!("{}-{i:06}", &run[..8]),
                "name": format!("Bench User {i}"),
                "email": format!("bench{i}@example.com"),
                "group": i % 10,
            });
            async move {
                let sent = Instant::now();
                let response = http.post(url).json(&body).send().await?;
                let status = response.status();
                if status != reqwest::StatusCode::CREATED {
                    bail!("create {i}: {status}: {}", response.text().await?);
                }
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<Result<Duration>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let preload = started.elapsed();
    latencies.sort_unstable();

    eprintln!("== walk at limit {limit}");
    let started = Instant::now();
    let (mut pages, mut walked, mut slowest) = (0usize, 0u64, Duration::ZERO);
    let mut cursor: Option<String> = None;
    let mut last_id: Option<String> = None;
    loop {
        let page_started = Instant::now();
        let mut request = http
            .get(format!("{base_url}/api/users"))
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let response = request.send().await?.error_for_status()?;
        let page: Page = response.json().await.context("a page")?;
        slowest = slowest.max(page_started.elapsed());
        pages += 1;
        for user in &page.items {
            ensure!(
                last_id.as_ref().is_none_or(|last| *last < user.id),
                "out of order: {last_id:?} then {:?}",
                user.id
            );
            last_id = Some(user.id.clone());
        }
        walked += page.items.len() as u64;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let walk = started.elapsed();

    eprintln!("== count, {count_runs} times");
    let mut count_times = Vec::with_capacity(count_runs);
    let mut counted = 0;
    for _ in 0..count_runs {
        let started = Instant::now();
        counted = count(&http, &base_url).await?;
        count_times.push(started.elapsed());
    }
    count_times.sort_unstable();

    let expected = before + users as u64;
    ensure!(
        walked == expected,
        "the walk listed {walked}, expected {expected}"
    );
    ensure!(
        counted == expected,
        "count said {counted}, expected {expected}"
    );

    let rate = users as f64 / preload.as_secs_f64();
    let walk_rate = walked as f64 / walk.as_secs_f64();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| users preloaded | {users} ({concurrency} in flight) |");
    println!("| preload time | {:.1} s |", preload.as_secs_f64());
    println!("| preload rate | {rate:.0} users/s |");
    println!(
        "| create latency p50 / p99 / max | {} / {} / {} |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    println!(
        "| full walk at limit {limit} | {:.2} s, {pages} pages, {walked} users ({walk_rate:.0} users/s) |",
        walk.as_secs_f64()
    );
    println!(
        "| page time mean / max | {} / {} |",
        ms(walk / pages.max(1) as u32),
        ms(slowest)
    );
    println!(
        "| count ({count_runs} runs) min / median / max | {} / {} / {} (= {counted}) |",
        ms(percentile(&count_times, 0.0)),
        ms(percentile(&count_times, 0.5)),
        ms(percentile(&count_times, 1.0))
    );
    Ok(())
}

async fn count(http: &reqwest::Client, base_url: &str) -> Result<u64> {
    let response = http
        .get(format!("{base_url}/api/users/count"))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json::<Count>().await?.count)
}
