//! [`Cluster`]: nats-server + N dbnodes + a gateway in one temp dir, torn down on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use protocol::{subjects, NodeId, NodeState, PartitionMap, Presence};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::gateway::Gateway;
use crate::process::dump_logs;
use crate::{BinDir, ClusterBuilder, DbNode, Nats, NatsAuth};

/// A running cluster of real processes in a temp dir (`KEEP_CLUSTER=1` keeps the dir).
/// Dropping it SIGKILLs every process; when the test is panicking it first prints the last
/// 40 lines of every log.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) gateway: Option<Gateway>,
    pub(crate) nodes: Vec<DbNode>,
    /// The NATS servers: one, or a cluster (`ClusterBuilder::nats_servers`).
    pub(crate) nats: Vec<Nats>,
    pub(crate) http: reqwest::Client,
    pub(crate) api_key: crate::ApiKey,
    pub(crate) map: PartitionMap,
    pub(crate) bins: BinDir,
    pub(crate) dir: PathBuf,
    pub(crate) temp: Option<TempDir>,
}

impl Cluster {
    /// A cluster of `nodes` dbnodes (and as many partitions) with the default options.
    pub async fn start(nodes: u32) -> Cluster {
        Cluster::builder().nodes(nodes).start().await
    }

    /// The API key the harness's client sends (every scope); its keys file is
    /// `{dir}/api-keys`.
    pub fn api_key(&self) -> &crate::ApiKey {
        &self.api_key
    }

    /// Options: read-from, request timeout, gateway or not.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where every process's log file is.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `PARTITIONS`.
    pub fn partitions(&self) -> u32 {
        self.map.count()
    }

    /// The partition map the cluster was provisioned with.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// The nats-server (the first, on a NATS cluster).
    pub fn nats(&mut self) -> &mut Nats {
        &mut self.nats[0]
    }

    /// NATS server `i` (`nats-i` on a NATS cluster).
    pub fn nats_server(&mut self, i: usize) -> &mut Nats {
        &mut self.nats[i]
    }

    /// How many NATS servers there are.
    pub fn nats_servers(&self) -> usize {
        self.nats.len()
    }

    /// The NATS URL every process uses: every server's, separated by commas.
    pub fn nats_url(&self) -> String {
        let urls: Vec<String> = self.nats.iter().map(Nats::url).collect();
        urls.join(",")
    }

    /// The NATS users and passwords (`None` for a cluster built `without_auth`).
    pub fn nats_auth(&self) -> Option<&NatsAuth> {
        self.nats[0].auth()
    }

    /// Node `db-{index}`.
    pub fn node(&mut self, index: u32) -> &mut DbNode {
        let count = self.nodes.len();
        self.nodes
            .get_mut(index as usize)
            .unwrap_or_else(|| panic!("no db-{index}: the cluster has {count} nodes"))
    }

    /// The gateway. Panics for a cluster built `without_gateway`.
    pub fn gateway(&mut self) -> &mut Gateway {
        self.gateway.as_mut().expect("this cluster has no gateway")
    }

    /// The gateway's `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.gateway
            .as_ref()
            .expect("this cluster has no gateway")
            .base_url()
    }

    /// Starts one more dbnode process claiming `db-{index}`, with its own data dir
    /// `<dir>/{name}` and log `logs/{name}.log` (e.g. a duplicate of a live node id). The
    /// caller owns it; dropping it kills it.
    pub fn spawn_dbnode(&self, index: u32, name: &str) -> DbNode {
        let log = self.logs_dir().join(format!("{name}.log"));
        let node = DbNode::new(
            &self.bins.dbnode,
            index,
            self.dir.join(name),
            &log,
            &self.nats_url(),
            &self.map,
        );
        let mut node = match self.nats_auth() {
            Some(auth) => node.with_nats_user(auth.node(index)),
            None => node,
        };
        node.start();
        node
    }

    /// Runs the operator's CLI, `ringstore {args}`, against this cluster's NATS (as `admin`
    /// when the server has users); panics if it cannot be run or takes over 30 s.
    pub async fn ringstore(&self, args: &[&str]) -> std::process::Output {
        assert!(
            self.bins.ringstore.is_file(),
            "{} not found: run `cargo build --workspace` first",
            self.bins.ringstore.display()
        );
        let mut command = tokio::process::Command::new(&self.bins.ringstore);
        command
            .args(args)
            .env("NATS_URL", self.nats_url())
            .kill_on_drop(true);
        if let Some(auth) = self.nats_auth() {
            command
                .env("NATS_USER", &auth.admin.user)
                .env("NATS_PASSWORD", &auth.admin.password);
        }
        let run = tokio::time::timeout(Duration::from_secs(30), command.output()).await;
        let output = run
            .unwrap_or_else(|_| panic!("ringstore {args:?} ran over 30 s"))
            .unwrap_or_else(|e| panic!("ringstore {args:?}: {e}"));
        eprintln!(
            "== ringstore {}: {}\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `dbnode --provision` again (e.g. after deleting a log stream), as `admin`.
    pub async fn provision(&self) {
        let auth = self
            .nats_auth()
            .expect("provisioning needs nats.conf's admin");
        crate::dbnode::provision(
            &self.bins.dbnode,
            &self.nats_url(),
            &auth.admin,
            &self.map,
            &[],
            &self.logs_dir().join("provision-again.log"),
        )
        .await;
    }

    /// A new NATS client connected to the cluster's server (5 s connect timeout), logged in as
    /// `admin` when the server has users.
    pub async fn nats_client(&self) -> async_nats::Client {
        let servers: Vec<async_nats::ServerAddr> = self
            .nats
            .iter()
            .map(|n| n.url().parse().expect("a NATS URL"))
            .collect();
        let connect = self.nats[0]
            .admin_options()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers);
        let url = self.nats_url();
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("cannot connect to NATS at {url}: {e}"),
            Err(_) => panic!("connecting to NATS at {url} timed out"),
        }
    }

    /// A new NATS client logged in as `user` (one of [`Cluster::nats_auth`]'s), as a process
    /// with that identity would be: the attacker's seat in the hostile tests.
    pub async fn nats_client_as(&self, user: &crate::NatsUser) -> async_nats::Client {
        let connect = user
            .connect_options()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.nats_url());
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("{} cannot log in: {e}", user.user),
            Err(_) => panic!("logging in as {} timed out", user.user),
        }
    }

    /// Waits (30 s at most) until `db-{index}` announces `ready` in its presence heartbeat,
    /// and returns that heartbeat. After a restart, only the new process can announce.
    pub async fn wait_node_ready(&self, index: u32) -> Presence {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.nats_client().await;
        let mut heartbeats = client
            .subscribe(subjects::presence(NodeId(index)))
            .await
            .expect("subscribe to presence");
        loop {
            let next = tokio::time::timeout_at(deadline, heartbeats.next()).await;
            let Ok(Some(msg)) = next else {
                panic!("db-{index} did not announce `ready` within 30 s");
            };
            if let Ok(presence) = serde_json::from_slice::<Presence>(&msg.payload) {
                if presence.state == NodeState::Ready {
                    return presence;
                }
            }
        }
    }

    /// Waits until every node of the cluster announces `ready`, or panics at `deadline`.
    pub(crate) async fn wait_nodes_ready(&self, deadline: Instant) {
        let client = self.nats_client().await;
        let mut heartbeats = client
            .subscribe(subjects::PRESENCE_ALL)
            .await
            .expect("subscribe to presence");
        let mut ready = vec![false; self.nodes.len()];
        while ready.contains(&false) {
            let next = tokio::time::timeout_at(deadline, heartbeats.next()).await;
            let Ok(Some(msg)) = next else {
                let missing: Vec<String> = (0..ready.len())
                    .filter(|&i| !ready[i])
                    .map(|i| format!("db-{i}"))
                    .collect();
                panic!(
                    "nodes not ready at the start-up deadline: {}",
                    missing.join(", ")
                );
            };
            if let Ok(presence) = serde_json::from_slice::<Presence>(&msg.payload) {
                if let Some(slot) = ready.get_mut(presence.node.0 as usize) {
                    *slot |= presence.state == NodeState::Ready;
                }
            }
        }
    }

    /// Waits (30 s at most) until the gateway answers `GET /ready` with 200.
    pub async fn wait_ready(&self) {
        self.wait_ready_until(Instant::now() + Duration::from_secs(30))
            .await;
    }

    pub(crate) async fn wait_ready_until(&self, deadline: Instant) {
        let url = format!("{}/ready", self.base_url());
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("GET /ready did not answer 200 before the deadline; last: {last}");
    }

    /// Prints the last 40 lines of every log file of the cluster to stderr.
    pub fn dump_logs(&self) {
        dump_logs(&self.logs_dir());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(gateway) = &mut self.gateway {
            gateway.kill();
        }
        for node in &mut self.nodes {
            node.kill9();
        }
        for nats in &mut self.nats {
            nats.kill();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("KEEP_CLUSTER").is_some() {
            if let Some(temp) = self.temp.take() {
                eprintln!(
                    "KEEP_CLUSTER: cluster dir kept at {}",
                    temp.keep().display()
                );
            }
        }
    }
}
