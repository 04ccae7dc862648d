//! The NATS connection settings both binaries take (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`,
//! `NATS_TLS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY`) and the client options they make.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

/// How long a client waits for a server to complete the handshake. A server answers a new
/// connection at once with its INFO; one that accepts and says nothing is paused or stalled
/// (the kernel completes TCP handshakes for a SIGSTOPped process), and a reconnecting client
/// that waited on it for the library's 5 s would leave writes stalled for the lost pings' 3 s
/// and then those 5 s more.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach and log in to NATS.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server URL, or several separated by commas (the client moves between them).
    #[arg(
        id = "nats_url",
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://localhost:4222"
    )]
    pub url: String,
    /// NATS user (with `NATS_PASSWORD`); unset = no authentication. Replies then come under
    /// `_INBOX.<user>.`, the inbox space nats.conf lets this identity read.
    #[arg(id = "nats_user", long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(
        id = "nats_password",
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM) that signed the NATS server's; set = TLS is required.
    #[arg(id = "nats_tls_ca", long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients, with `NATS_TLS_KEY`.
    #[arg(
        id = "nats_tls_cert",
        long = "nats-tls-cert",
        env = "NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "nats_tls_key",
        long = "nats-tls-key",
        env = "NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl NatsConfig {
    /// The servers of `NATS_URL`.
    pub fn servers(&self) -> Result<Vec<ServerAddr>, std::io::Error> {
        self.url
            .split(',')
            .map(|url| url.trim().parse::<ServerAddr>())
            .collect()
    }

    /// Client options: the connection `name`, credentials and private inbox, TLS, a ping
    /// every second (a dead or paused server is left within about 3 s), a handshake bounded
    /// by [`CONNECT_TIMEOUT`], reconnecting forever.
    pub fn options(&self, name: impl ToString) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            // A server that stops answering (paused, a stalled host, a cut link) is left for
            // another of NATS_URL's after three unanswered pings: about 3 s.
            .ping_interval(Duration::from_secs(1))
            .connection_timeout(CONNECT_TIMEOUT);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options
                .user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(format!("{}{user}", protocol::subjects::INBOX_PREFIX));
        }
        if let Some(ca) = &self.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }

    /// Connects with `options` to the servers of `NATS_URL`.
    pub async fn connect(
        &self,
        options: ConnectOptions,
    ) -> Result<async_nats::Client, async_nats::Error> {
        Ok(options.connect(self.servers()?).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsConfig,
    }

    #[test]
    fn several_servers() {
        let cli = Cli::parse_from(["x", "--nats-url", "nats://a:4222, nats://b:4223"]);
        assert_eq!(cli.nats.servers().unwrap().len(), 2);
        let bad = Cli::parse_from(["x", "--nats-url", "nats://a:4222,::"]);
        assert!(bad.nats.servers().is_err());
    }

    #[test]
    fn the_arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// A paused server still completes TCP handshakes (the kernel accepts) but never sends
    /// its INFO; a client reconnecting must not wait on it for longer than a lost ping does.
    #[tokio::test]
    async fn a_server_that_never_answers_the_handshake_is_left_within_the_connect_timeout() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("nats://{}", silent.local_addr().unwrap());
        let cli = Cli::parse_from(["x", "--nats-url", &url]);
        let started = std::time::Instant::now();
        let options = cli.nats.options("test").max_reconnects(1);
        assert!(cli.nats.connect(options).await.is_err());
        let waited = started.elapsed();
        assert!(
            waited < CONNECT_TIMEOUT * 2,
            "waited {waited:?} on a server that never answered"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        assert!(Cli::try_parse_from(["x", "--nats-tls-cert", "c.pem"]).is_err());
    }
}
