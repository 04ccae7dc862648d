//! [`DbNode`]: one real `dbnode` process with its own data directory and log file.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use protocol::PartitionMap;

use crate::auth::NatsUser;
use crate::process::{Proc, TERMINATE_TIMEOUT};

/// A `dbnode` process for node `db-{index}`. The data directory and the command line survive
/// kills, so `start` after `kill9`/`terminate` is a restart of the same node.
#[derive(Debug)]
pub struct DbNode {
    index: u32,
    data_dir: PathBuf,
    proc: Proc,
}

impl DbNode {
    /// Describes (does not start) `db-{index}` with `DATA_DIR=data_dir`, talking to
    /// `nats_url`, its output appended to `log`.
    pub fn new(
        bin: &Path,
        index: u32,
        data_dir: PathBuf,
        log: &Path,
        nats_url: &str,
        map: &PartitionMap,
    ) -> DbNode {
        let id = format!("db-{index}");
        let proc = Proc::new(&id, bin, log)
            .env("DB_INSTANCE_ID", &id)
            .env("DATA_DIR", data_dir.display())
            .env("NATS_URL", nats_url)
            .env("PARTITIONS", map.count())
            .env("NODES", map.nodes().len())
            .env("RUST_LOG", "info,dbnode=debug")
            .env("LOG_FORMAT", "pretty")
            .env("NO_COLOR", "1");
        DbNode {
            index,
            data_dir,
            proc,
        }
    }

    /// Logs in to NATS as `user` (`NATS_USER`, `NATS_PASSWORD`). Call before the first start.
    pub fn with_nats_user(self, user: &NatsUser) -> DbNode {
        DbNode {
            proc: self
                .proc
                .env("NATS_USER", &user.user)
                .env("NATS_PASSWORD", &user.password),
            ..self
        }
    }

    /// Sets one more environment variable (e.g. `DUPLICATE_WINDOW_SECS`). Call before the
    /// first start.
    pub fn with_env(self, key: &str, value: &str) -> DbNode {
        DbNode {
            proc: self.proc.env(key, value),
            ..self
        }
    }

    /// The node index `i` of `db-i`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The node id, `db-{index}` (its `DB_INSTANCE_ID`).
    pub fn id(&self) -> String {
        format!("db-{}", self.index)
    }

    /// Its `DATA_DIR`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The OS process id while running.
    pub fn pid(&mut self) -> Option<u32> {
        self.proc.pid()
    }

    /// Starts (or restarts) the process with the same data dir. Panics if it is running.
    pub fn start(&mut self) {
        self.proc.start();
    }

    /// True while the process exists (also while SIGSTOPped).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM and wait (15 s at most) for the graceful exit; returns the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate(TERMINATE_TIMEOUT).await
    }

    /// SIGSTOP: the process freezes, its sockets stay open (a paused container).
    pub fn stop(&mut self) {
        self.proc.signal("STOP");
    }

    /// SIGCONT after [`DbNode::stop`].
    pub fn cont(&mut self) {
        self.proc.signal("CONT");
    }

    /// True between [`DbNode::stop`] and [`DbNode::cont`].
    pub fn is_stopped(&self) -> bool {
        self.proc.is_stopped()
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// Removes the data directory: the node loses its disk. Panics while the process runs.
    pub fn wipe(&mut self) {
        assert!(
            !self.is_running(),
            "wipe {}: stop the process first (terminate or kill9)",
            self.id()
        );
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot wipe {}: {e}", self.data_dir.display()),
        }
    }
}

/// Runs `dbnode --provision` as `admin`: writes `map` as the first partition map, creates
/// every partition's log stream and the
/// Idempotency-Key bucket, as an operator does once per deployment (the nodes' own identities
/// may not create streams). `env` is passed on (e.g. `DUPLICATE_WINDOW_SECS`, a property of
/// the streams it creates). Prints every log beside its own (the servers') and panics if it
/// fails or takes over 60 s (a NATS cluster of a loaded CI machine once refused placement for
/// 30 s after start).
pub async fn provision(
    bin: &Path,
    nats_url: &str,
    admin: &NatsUser,
    map: &PartitionMap,
    env: &[(String, String)],
    log: &Path,
) {
    let out = std::fs::File::create(log).expect("the provisioning log");
    let mut command = tokio::process::Command::new(bin);
    command
        .arg("--provision")
        .env("NATS_URL", nats_url)
        .env("NATS_USER", &admin.user)
        .env("NATS_PASSWORD", &admin.password)
        .env("PARTITIONS", map.count().to_string())
        .env("NODES", map.nodes().len().to_string())
        .env("LOG_FORMAT", "pretty")
        .env("NO_COLOR", "1")
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), command.status()).await;
    match status {
        Ok(Ok(status)) if status.success() => {}
        other => {
            // Why JetStream would not place a stream is in the servers' logs, beside this one.
            crate::process::dump_logs(log.parent().unwrap_or(Path::new(".")));
            panic!("dbnode --provision failed ({other:?}); its log and the servers' are above");
        }
    }
}
