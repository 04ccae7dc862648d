//! Gateway configuration: every setting is an env var and a `--flag` (README, "Configuration").

use std::time::Duration;

/// Which copy of a partition serves reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFrom {
    /// The replica first (spreads reads off the primaries), then the primary.
    Replica,
    /// The primary first, then the replica.
    Primary,
}

/// Gateway settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about = "ringstore REST gateway")]
pub struct Config {
    /// HTTP port.
    #[arg(long, env = "REST_PORT", default_value_t = 3001)]
    pub rest_port: u16,
    /// NATS: servers, credentials, TLS.
    #[command(flatten)]
    pub nats: runtime::NatsConfig,
    /// `replica` or `primary`.
    #[arg(long, env = "READ_FROM", value_enum, default_value = "replica")]
    pub read_from: ReadFrom,
    /// How long one HTTP request may wait for dbnodes, failover included.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub request_timeout_ms: u64,
    /// How long a whole write may take, body upload included, before it is answered 408
    /// (a client that sends its body slowly holds a connection and a concurrency slot).
    /// Kept above `REQUEST_TIMEOUT_MS` by at least a second, so that dbnode calls end first.
    #[arg(long, env = "MAX_REQUEST_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub max_request_ms: u64,
    /// How long a connection may go without a request in flight before it completes a request
    /// head: from accept (TLS handshake, HTTP/2 preface and SETTINGS included) or from its last
    /// response. Then it is closed (slow-header attacks, idle keep-alive connections).
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 5000)]
    pub header_timeout_ms: u64,
    /// How long a connection's writes may make no progress (its client reads nothing) before
    /// the connection is reset, change feeds included.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub write_timeout_ms: u64,
    /// HTTP connections open at once (TLS handshakes included); one more is closed as soon as
    /// it is accepted.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// How long the gateway may take to stop after SIGTERM/SIGINT: requests in flight, then
    /// the NATS drain; whatever is left then is abandoned and the process exits.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 8000,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub shutdown_timeout_ms: u64,
    /// Requests served at once; more are answered 503 with `Retry-After` at once.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Change feeds (`GET /api/users/changes`) served at once; more are answered 503.
    #[arg(long, env = "MAX_CHANGE_FEEDS", default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_change_feeds: u64,
    /// A change feed with nothing to send sends a keep-alive comment this often, so that
    /// proxies and clients see the connection alive.
    #[arg(long, env = "CHANGE_FEED_KEEPALIVE_MS", default_value_t = 15_000,
        value_parser = clap::value_parser!(u64).range(10..=300_000))]
    pub change_feed_keepalive_ms: u64,
    /// A change feed whose client reads nothing for this long is ended (the client resumes
    /// from its last event), so that a slow client never makes the gateway buffer for it.
    #[arg(long, env = "CHANGE_FEED_STALL_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub change_feed_stall_ms: u64,
    /// API keys (`<name> sha256:<hex> <scopes>` per line, `scripts/api-key` makes them);
    /// unset = no REST authentication (local development only).
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM), with `TLS_KEY`; unset = plain HTTP.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The HTTPS certificate's private key (PEM).
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Logging.
    #[command(flatten)]
    pub log: runtime::LogConfig,
}

impl Config {
    /// `MAX_REQUEST_MS` as a duration, at least `REQUEST_TIMEOUT_MS` + 1 s.
    pub fn max_request(&self) -> Duration {
        Duration::from_millis(self.max_request_ms.max(self.request_timeout_ms + 1000))
    }

    /// The change feeds' limits.
    pub fn feed_limits(&self) -> crate::logs::FeedLimits {
        crate::logs::FeedLimits {
            max_feeds: self.max_change_feeds as usize,
            keep_alive: Duration::from_millis(self.change_feed_keepalive_ms),
            stall: Duration::from_millis(self.change_feed_stall_ms),
            end_grace: Duration::from_millis(self.write_timeout_ms),
        }
    }

    /// The HTTP server's limits.
    pub fn server_limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            max_connections: self.max_connections as usize,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
        }
    }

    /// `REQUEST_TIMEOUT_MS` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_and_variables_are_consistent() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
