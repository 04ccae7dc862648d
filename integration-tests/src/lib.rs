//! ringstore cluster-test harness: a real `nats-server` on a free port, the real `dbnode` and
//! `gateway` binaries as processes, temp data dirs, one log file per process.
//!
//! - [`Cluster`] brings everything up ([`Cluster::start`], [`Cluster::builder`]), waits until
//!   every node announces `ready` and `GET /ready` is 200, and SIGKILLs every process on drop
//!   (printing the last 40 lines of every log when the test is failing).
//! - [`Nats`], [`DbNode`] and [`Gateway`] are the process handles: kill -9, SIGTERM,
//!   SIGSTOP/SIGCONT, restart on the same port or data dir, wipe.
//! - HTTP helpers on [`Cluster`] (`create`, `get`, `put`, `put_id`, `patch`, `delete`)
//!   percent-encode ids; every request has a 10 s timeout. [`expect`] and
//!   [`expect_problem`] read a response and assert its status (and problem+json shape).
//! - [`eventually`] polls a condition under a deadline: tests never sleep to synchronise.
//! - Behind the gateway: [`Cluster::copy`] asks one copy of a partition directly over NATS
//!   ([`CopyReader`]); [`Cluster::log_end`] and [`Cluster::log_entry`] read a partition's log;
//!   [`Cluster::wait_caught_up`] waits until a node has applied its logs to the end.
//!
//! - [`probe`] reads what a process holds: its resident memory, the TCP sockets on a port.
//! - [`feed`] reads a change feed as Server-Sent Events; [`Browser`] drives a headless
//!   Chromium through chromedriver (WebDriver), screenshots into [`artifacts_dir`].
//!
//! NATS runs with the repository's `nats.conf` (one user per role, subject permissions) and
//! fresh random passwords; each process logs in as its role, the harness's own clients
//! ([`Cluster::nats_client`]) as `admin`. [`ClusterBuilder::without_auth`] starts an open
//! server instead.
//!
//! Binaries come from `$RINGSTORE_BIN_DIR`, else from the cargo target dir of the running
//! test (`target/debug`); build them first with `cargo build --workspace`. `KEEP_CLUSTER=1`
//! keeps a cluster's temp dir (data and logs) after the test.

mod auth;
mod browser;
mod builder;
pub mod checker;
mod cluster;
mod dbnode;
pub mod feed;
mod gateway;
pub mod history;
mod http;
mod inspect;
mod nats;
pub mod probe;
mod process;
mod reply;
mod tls;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

pub use crate::auth::{nats_conf, ApiKey, NatsAuth, NatsUser};
pub use crate::browser::{artifacts_dir, Browser, BrowserBins, ConsoleEntry};
pub use crate::builder::ClusterBuilder;
pub use crate::cluster::Cluster;
pub use crate::dbnode::DbNode;
pub use crate::gateway::{Gateway, GatewayConfig, ReadFrom};
pub use crate::http::{client, encode_segment, metric_sample, send, user_path, REQUEST_TIMEOUT};
pub use crate::inspect::CopyReader;
pub use crate::nats::Nats;
pub use crate::reply::{etag, etag_of, expect, expect_problem, HttpReply};
pub use crate::tls::TlsFiles;

/// How often [`eventually`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Where the `dbnode`, `gateway` and `ringstore` (CLI) binaries are.
#[derive(Debug, Clone)]
pub struct BinDir {
    /// The `dbnode` binary.
    pub dbnode: PathBuf,
    /// The `gateway` binary.
    pub gateway: PathBuf,
    /// The operator's CLI, `ringstore` (checked where it is used).
    pub ringstore: PathBuf,
}

impl BinDir {
    /// `$RINGSTORE_BIN_DIR`, else the target dir of this test binary
    /// (`target/debug/deps/..`). Panics if `dbnode` (or, with `need_gateway`, `gateway`) is
    /// not there.
    pub fn locate(need_gateway: bool) -> BinDir {
        let dir = match std::env::var_os("RINGSTORE_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().expect("the test binary's path");
                let parent = exe.parent().expect("the test binary has a directory");
                match parent.file_name() {
                    Some(name) if name == "deps" => parent.parent().unwrap_or(parent).to_owned(),
                    _ => parent.to_owned(),
                }
            }
        };
        let bins = BinDir {
            dbnode: dir.join("dbnode"),
            gateway: dir.join("gateway"),
            ringstore: dir.join("ringstore"),
        };
        let mut needed = vec![&bins.dbnode];
        if need_gateway {
            needed.push(&bins.gateway);
        }
        for bin in needed {
            assert!(
                bin.is_file(),
                "{} not found: run `cargo build --workspace` first (or set RINGSTORE_BIN_DIR)",
                bin.display()
            );
        }
        bins
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
///
/// The kernel may hand the same port to two binds in a row once the first is closed: this
/// process never gets one port twice (a server's client and monitor ports once collided so).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, and returns that value. Panics, naming
/// the caller's line, if `deadline` passes first; an attempt still running at the deadline is
/// abandoned.
///
/// ```no_run
/// # async fn demo(cluster: &integration_tests::Cluster) {
/// use std::time::Duration;
/// let user = integration_tests::eventually(Duration::from_secs(10), || async {
///     let r = cluster.get("u1").await;
///     r.status().is_success().then_some(r)
/// })
/// .await;
/// # }
/// ```
#[track_caller]
pub fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let end = Instant::now() + deadline;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if let Ok(Some(value)) = tokio::time::timeout_at(end, check()).await {
                return value;
            }
            if Instant::now() >= end {
                panic!("eventually at {caller}: condition not met within {deadline:?} ({attempts} attempts)");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
