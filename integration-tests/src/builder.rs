//! [`ClusterBuilder`]: the options of a [`Cluster`] and its start-up sequence.

use std::time::Duration;

use protocol::PartitionMap;
use tokio::time::Instant;

use crate::gateway::{Gateway, GatewayConfig, ReadFrom};
use crate::{ApiKey, BinDir, Cluster, DbNode, Nats, NatsAuth, TlsFiles};

/// Options for [`Cluster`]; [`ClusterBuilder::start`] brings it up.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: u32,
    partitions: Option<u32>,
    read_from: ReadFrom,
    request_timeout: Duration,
    gateway: bool,
    ready_timeout: Duration,
    auth: bool,
    tls: bool,
    nats_servers: usize,
    dbnode_env: Vec<(String, String)>,
    gateway_env: Vec<(String, String)>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            nodes: 3,
            partitions: None,
            read_from: ReadFrom::Replica,
            request_timeout: Duration::from_millis(2000),
            gateway: true,
            ready_timeout: Duration::from_secs(30),
            auth: true,
            tls: false,
            nats_servers: 1,
            dbnode_env: Vec::new(),
            gateway_env: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// An environment variable for the gateway.
    pub fn gateway_env(mut self, key: &str, value: impl ToString) -> Self {
        self.gateway_env.push((key.to_owned(), value.to_string()));
        self
    }

    /// TLS everywhere: NATS requires it of every client (the processes verify it with a CA
    /// made for this cluster) and the gateway serves HTTPS.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Number of dbnodes, `db-0..db-{n-1}` (default 3).
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.nodes = nodes;
        self
    }

    /// `PARTITIONS` (default: the number of nodes).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// The gateway's `READ_FROM` (default replica).
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// The gateway's `REQUEST_TIMEOUT_MS` (default 2 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Start no gateway: NATS and dbnodes only (scenarios that talk to the nodes directly).
    pub fn without_gateway(mut self) -> Self {
        self.gateway = false;
        self
    }

    /// How long start-up may take until every node is ready and `GET /ready` is 200
    /// (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// One more environment variable for every dbnode (e.g. `DUPLICATE_WINDOW_SECS`).
    pub fn dbnode_env(mut self, key: &str, value: impl ToString) -> Self {
        self.dbnode_env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Runs `n` NATS servers as one cluster (routes, clustered JetStream) and every log
    /// stream with `n` replicas (`STREAM_REPLICAS`); every process gets all their URLs.
    /// Needs `nats.conf` (not with [`ClusterBuilder::without_auth`]) and no TLS.
    pub fn nats_servers(mut self, n: usize) -> Self {
        self.nats_servers = n.max(1);
        if n > 1 {
            self.dbnode_env
                .push(("STREAM_REPLICAS".into(), n.to_string()));
        }
        self
    }

    /// An open nats-server (no users, no permissions) instead of one with `nats.conf`.
    pub fn without_auth(mut self) -> Self {
        self.auth = false;
        self
    }

    /// Starts NATS, the dbnodes and the gateway, and waits until every node announces
    /// `ready` and the gateway answers `GET /ready` with 200.
    pub async fn start(mut self) -> Cluster {
        let bins = BinDir::locate(self.gateway);
        let temp = tempfile::Builder::new()
            .prefix("ringstore-cluster-")
            .tempdir()
            .expect("a temp dir for the cluster");
        let dir = temp.path().to_owned();
        let logs = dir.join("logs");
        let partitions = self.partitions.unwrap_or(self.nodes);
        let map = PartitionMap::initial(partitions, self.nodes).expect("1 to PARTITIONS nodes");
        eprintln!(
            "== cluster: {} nodes, {partitions} partitions in {}{}",
            self.nodes,
            dir.display(),
            if self.auth {
                " (nats.conf, users)"
            } else {
                " (open NATS)"
            }
        );

        let nats_log = logs.join("nats.log");
        let tls = self.tls.then(|| TlsFiles::generate(&dir));
        if let Some(tls) = &tls {
            self.dbnode_env
                .push(("NATS_TLS_CA".into(), tls.ca.display().to_string()));
        }
        let nats = if self.nats_servers > 1 {
            assert!(
                self.auth && tls.is_none(),
                "a NATS cluster runs with nats.conf, no TLS"
            );
            Nats::start_cluster(
                &dir,
                &logs,
                self.nats_servers,
                NatsAuth::for_map(&map, &dir),
            )
            .await
        } else if self.auth {
            let auth = NatsAuth::for_map(&map, &dir);
            vec![Nats::start_secured(&dir, &nats_log, auth, tls.clone()).await]
        } else {
            vec![Nats::start(&dir, &nats_log).await]
        };
        let nats_urls: Vec<String> = nats.iter().map(Nats::url).collect();
        let nats_url = nats_urls.join(",");
        let auth = nats[0].auth().cloned();
        let nodes = (0..self.nodes)
            .map(|i| {
                let data = dir.join(format!("db-{i}"));
                let log = logs.join(format!("db-{i}.log"));
                let mut node = DbNode::new(&bins.dbnode, i, data, &log, &nats_url, &map);
                for (key, value) in &self.dbnode_env {
                    node = node.with_env(key, value);
                }
                match &auth {
                    Some(auth) => node.with_nats_user(auth.node(i)),
                    None => node,
                }
            })
            .collect();
        // With nats.conf the nodes may not create streams: provision them first, as an
        // operator does. (On an open server the nodes create their own.)
        if let Some(auth) = &auth {
            crate::dbnode::provision(
                &bins.dbnode,
                &nats_url,
                &auth.admin,
                &map,
                &self.dbnode_env,
                &logs.join("provision.log"),
            )
            .await;
        }
        // REST authentication is on in every cluster test: the harness's client carries a key
        // with every scope.
        let api_key = ApiKey::random("harness", "read,write,admin");
        let keys_file = dir.join("api-keys");
        std::fs::write(&keys_file, api_key.line()).expect("the API keys file");
        let gateway = self.gateway.then(|| {
            let config = GatewayConfig {
                nats_url: nats_url.clone(),
                read_from: self.read_from,
                request_timeout: self.request_timeout,
            };
            let mut gateway = Gateway::new(&bins.gateway, &logs.join("gateway.log"), &config)
                .with_api_keys(&keys_file);
            if let Some(tls) = &tls {
                gateway = gateway
                    .with_env("NATS_TLS_CA", tls.ca.display())
                    .with_https(tls);
            }
            for (key, value) in &self.gateway_env {
                gateway = gateway.with_env(key, value);
            }
            match &auth {
                Some(auth) => gateway.with_nats_user(&auth.gateway),
                None => gateway,
            }
        });
        // From here on, a panic drops `cluster`: every process is killed and the logs dumped.
        let mut cluster = Cluster {
            gateway,
            nodes,
            nats,
            http: crate::http::client_trusting(Some(&api_key.key), tls.as_ref()),
            api_key,
            map,
            bins,
            dir,
            temp: Some(temp),
        };
        for node in &mut cluster.nodes {
            node.start();
        }
        if let Some(gateway) = &mut cluster.gateway {
            gateway.start();
        }
        let deadline = Instant::now() + self.ready_timeout;
        cluster.wait_nodes_ready(deadline).await;
        if cluster.gateway.is_some() {
            cluster.wait_ready_until(deadline).await;
        }
        eprintln!("== cluster: ready");
        cluster
    }
}
