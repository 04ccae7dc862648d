//! [`NatsAuth`]: the users of the repository's `nats.conf` (one per role, one per dbnode) and
//! their passwords, which nats-server reads from its environment.

use std::path::{Path, PathBuf};

use protocol::PartitionMap;

/// One NATS user: what a process gets as `NATS_USER` / `NATS_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// The user name (`gateway`, `db-0`.. or `admin` in `nats.conf`).
    pub user: String,
    /// Its password.
    pub password: String,
}

impl NatsUser {
    fn new(user: &str, password: String) -> NatsUser {
        NatsUser {
            user: user.to_owned(),
            password,
        }
    }

    /// Client options that log in as this user, with replies under `_INBOX.{user}.` as the
    /// real processes do (the only inbox space nats.conf lets the user read).
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(self.user.clone(), self.password.clone())
            .custom_inbox_prefix(format!("_INBOX.{}", self.user))
    }
}

/// The users of a `nats.conf`: the gateway's, one per dbnode (`db-0`, `db-1`, …) and an
/// admin with every permission (provisioning, operators, the `nats` CLI, the tests' own
/// clients), and the configuration file that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAuth {
    /// User `gateway`: requests `ringstore.part.>`, hears presence.
    pub gateway: NatsUser,
    /// Users `db-{i}`: serve their own two partitions, write and tail their logs.
    pub nodes: Vec<NatsUser>,
    /// User `admin`: everything.
    pub admin: NatsUser,
    /// The server configuration with these users: the repository's `nats.conf` for the
    /// default ring, else one rendered for the ring.
    pub conf: PathBuf,
}

impl NatsAuth {
    /// The repository's `nats.conf` (the default ring: 3 nodes) with fresh random passwords,
    /// so that a test never passes by relying on the local defaults.
    pub fn random() -> NatsAuth {
        NatsAuth::with_nodes(3, nats_conf())
    }

    /// The users of `map`'s ring: the repository's `nats.conf` when `map` is the default first
    /// map, else the configuration rendered for `map` (as `scripts/nats-conf` does), written
    /// to `dir/nats.conf`.
    pub fn for_map(map: &PartitionMap, dir: &Path) -> NatsAuth {
        let default = PartitionMap::initial(protocol::DEFAULT_PARTITIONS, 3).expect("a map");
        if *map == default {
            return NatsAuth::random();
        }
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, protocol::access::render(map)).expect("the rendered nats.conf");
        NatsAuth::with_nodes(map.nodes().len(), conf)
    }

    fn with_nodes(nodes: usize, conf: PathBuf) -> NatsAuth {
        let password = || uuid::Uuid::new_v4().simple().to_string();
        NatsAuth {
            gateway: NatsUser::new("gateway", password()),
            nodes: (0..nodes)
                .map(|i| NatsUser::new(&format!("db-{i}"), password()))
                .collect(),
            admin: NatsUser::new("admin", password()),
            conf,
        }
    }

    /// The identity of dbnode `db-{i}`.
    pub fn node(&self, i: u32) -> &NatsUser {
        &self.nodes[i as usize]
    }

    /// The environment nats-server needs to load `nats.conf` with these passwords.
    pub fn server_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "NATS_GATEWAY_PASSWORD".into(),
                self.gateway.password.clone(),
            ),
            ("NATS_ADMIN_PASSWORD".into(), self.admin.password.clone()),
        ];
        for (i, node) in self.nodes.iter().enumerate() {
            env.push((format!("NATS_DB{i}_PASSWORD"), node.password.clone()));
        }
        env
    }
}

/// The repository's `nats.conf` (or `$RINGSTORE_NATS_CONF`).
pub fn nats_conf() -> PathBuf {
    match std::env::var_os("RINGSTORE_NATS_CONF") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../nats.conf")),
    }
}

/// A REST API key, as the gateway's `API_KEYS_FILE` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its name (the caller its requests are made as).
    pub name: String,
    /// The secret a client sends as `Authorization: Bearer …`.
    pub key: String,
    /// Comma-separated: `read`, `write`, `admin`.
    pub scopes: String,
}

impl ApiKey {
    /// A fresh random key.
    pub fn random(name: &str, scopes: &str) -> ApiKey {
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        ApiKey {
            name: name.into(),
            key,
            scopes: scopes.into(),
        }
    }

    /// Its line in a keys file: the key itself is never written, only its SHA-256.
    pub fn line(&self) -> String {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(self.key.as_bytes()));
        format!("{} sha256:{digest} {}\n", self.name, self.scopes)
    }
}
