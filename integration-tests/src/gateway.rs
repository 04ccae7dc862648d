//! [`Gateway`]: one real `gateway` process on a free loopback port.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::auth::NatsUser;
use crate::process::Proc;

/// Where the gateway sends reads first (`READ_FROM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// Reads go to the partition's replica first (the default).
    #[default]
    Replica,
    /// Reads go to the partition's primary first.
    Primary,
}

impl ReadFrom {
    /// The `READ_FROM` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Replica => "replica",
            ReadFrom::Primary => "primary",
        }
    }
}

/// The gateway's settings that tests vary.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `NATS_URL`.
    pub nats_url: String,
    /// `READ_FROM`.
    pub read_from: ReadFrom,
    /// `REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
}

/// A `gateway` process. `restart` keeps the port, so [`Gateway::base_url`] stays valid.
#[derive(Debug)]
pub struct Gateway {
    port: u16,
    proc: Proc,
    https: bool,
}

impl Gateway {
    /// Describes (does not start) a gateway on a free port, its output appended to `log`.
    pub fn new(bin: &Path, log: &Path, config: &GatewayConfig) -> Gateway {
        let port = crate::free_port();
        let proc = Proc::new("gateway", bin, log)
            .env("REST_PORT", port)
            .env("NATS_URL", &config.nats_url)
            .env("READ_FROM", config.read_from.as_str())
            .env("REQUEST_TIMEOUT_MS", config.request_timeout.as_millis())
            .env("RUST_LOG", "info,gateway=debug")
            .env("LOG_FORMAT", "pretty")
            .env("NO_COLOR", "1");
        Gateway {
            port,
            proc,
            https: false,
        }
    }

    /// Sets an environment variable. Call before the first start.
    pub fn with_env(self, key: &str, value: impl std::fmt::Display) -> Gateway {
        Gateway {
            proc: self.proc.env(key, value),
            ..self
        }
    }

    /// Serves HTTPS with `tls`'s certificate (`TLS_CERT`, `TLS_KEY`). Call before the first
    /// start.
    pub fn with_https(self, tls: &crate::TlsFiles) -> Gateway {
        Gateway {
            https: true,
            ..self
                .with_env("TLS_CERT", tls.cert.display())
                .with_env("TLS_KEY", tls.key.display())
        }
    }

    /// Logs in to NATS as `user` (`NATS_USER`, `NATS_PASSWORD`). Call before the first start.
    pub fn with_nats_user(self, user: &NatsUser) -> Gateway {
        Gateway {
            proc: self
                .proc
                .env("NATS_USER", &user.user)
                .env("NATS_PASSWORD", &user.password),
            ..self
        }
    }

    /// Asks for API keys (`API_KEYS_FILE`). Call before the first start.
    pub fn with_api_keys(self, file: &Path) -> Gateway {
        Gateway {
            proc: self.proc.env("API_KEYS_FILE", file.display()),
            ..self
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` when it serves HTTPS).
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The REST port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Starts the process. Panics if it is running.
    pub fn start(&mut self) {
        self.proc.start();
    }

    /// True while the process exists.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    /// Kills the process (if running) and starts it again on the same port. Use
    /// [`crate::Cluster::wait_ready`] to wait until it serves.
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc.start();
    }

    /// The OS process id while it runs (for `/proc/<pid>/status`).
    pub fn pid(&mut self) -> Option<u32> {
        self.proc.pid()
    }

    /// Sends SIGTERM and returns at once (see [`Gateway::wait_exit`]).
    pub fn sigterm(&mut self) {
        self.proc.signal("TERM");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// SIGTERM and wait (15 s at most) for the graceful exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate(crate::process::TERMINATE_TIMEOUT).await
    }
}
