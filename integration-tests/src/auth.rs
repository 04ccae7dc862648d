//! [`NatsAuth`]: the users of the repository's `nats.conf` (one per role) and their passwords,
//! which nats-server reads from its environment.

use std::path::PathBuf;

/// One NATS user: what a process gets as `NATS_USER` / `NATS_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// The user name (`gateway`, `dbnode` or `admin` in `nats.conf`).
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

    /// Client options that log in as this user.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(self.user.clone(), self.password.clone())
    }
}

/// The three users of `nats.conf`: the gateway's, the dbnodes' (shared by every node) and an
/// admin with every permission (operators, the `nats` CLI, the tests' own clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAuth {
    /// User `gateway`: requests `ringstore.part.>`, hears presence.
    pub gateway: NatsUser,
    /// User `dbnode`: serves partitions, writes and tails the logs.
    pub dbnode: NatsUser,
    /// User `admin`: everything.
    pub admin: NatsUser,
}

impl NatsAuth {
    /// Fresh random passwords, so that a test never passes by relying on the local defaults.
    pub fn random() -> NatsAuth {
        let password = || uuid::Uuid::new_v4().simple().to_string();
        NatsAuth {
            gateway: NatsUser::new("gateway", password()),
            dbnode: NatsUser::new("dbnode", password()),
            admin: NatsUser::new("admin", password()),
        }
    }

    /// The environment nats-server needs to load `nats.conf` with these passwords.
    pub fn server_env(&self) -> [(&'static str, &str); 3] {
        [
            ("NATS_GATEWAY_PASSWORD", &self.gateway.password),
            ("NATS_DBNODE_PASSWORD", &self.dbnode.password),
            ("NATS_ADMIN_PASSWORD", &self.admin.password),
        ]
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
