//! Who may do what on NATS: the accounts and identities of a deployment, derived from the
//! partition map and rendered as nats-server configuration. This is the one place the rights
//! are written down; the repository's `nats.conf` is [`render`]'s output for the default ring
//! (a test keeps the two equal) and `scripts/nats-conf` writes it for another.
//!
//! Three accounts (docs/security.md has the argument):
//! - `RING` holds the JetStream streams (the partition logs, the Idempotency-Key bucket) and
//!   the operator's identity `admin`. No process of the deployment logs in here.
//! - `NODES`: the dbnodes, one user each (`db-{i}`), each allowed only its own presence and
//!   ping subjects, its partitions' requests, and appends and reads of its partitions' logs.
//! - `GW`: the gateways (user `gateway`).
//!
//! What crosses an account boundary does so through declared service imports and exports, and
//! the answer to a request that crossed one comes back through the server's mapping of its
//! reply subject (`_R_.…`) into the requester's own account. So nothing a `NODES` or `GW`
//! identity asks can make the server, a dbnode or JetStream publish into `RING`'s subjects: a
//! reply subject a client chooses lives in the client's account, where no log is.

use crate::partition::{NodeId, PartitionId, PartitionMap, Role};
use crate::subjects;

/// The account of the streams and the operator.
pub const RING_ACCOUNT: &str = "RING";
/// The account of the dbnodes.
pub const NODES_ACCOUNT: &str = "NODES";
/// The account of the gateways.
pub const GATEWAY_ACCOUNT: &str = "GW";

/// How long the server keeps the reply mapping of a request whose answer may come in several
/// messages (direct-get batches, `$SRV` pings to every node): longer than any of them takes.
const STREAMED_RESPONSES: &str = "5s";

/// What one identity may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// The environment variable that holds `user`'s password in the rendered configuration.
pub fn password_var(user: &str) -> String {
    let name: String = user.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("NATS_{}_PASSWORD", name.to_ascii_uppercase())
}

/// The JetStream API subjects that read partition `p`'s log: its info, direct gets (batches
/// from a sequence, and a record's latest entry by subject), and the leader's message get.
fn log_reads(p: PartitionId) -> Vec<String> {
    let stream = subjects::stream_name(p);
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        subjects::direct_get(p),
        format!("{}.>", subjects::direct_get(p)),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// The key bucket's subjects the gateways use: its info, its keys, direct reads of a key.
fn key_bucket() -> Vec<String> {
    let stream = format!("KV_{}", subjects::IDEMPOTENCY_BUCKET);
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$KV.{}.>", subjects::IDEMPOTENCY_BUCKET),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// The map bucket's subjects every process reads it with: its info and direct reads of its
/// key. Nobody but `admin` may write it.
fn map_reads() -> Vec<String> {
    let stream = format!("KV_{}", subjects::MAP_BUCKET);
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// What dbnode `node` may do under `map`: publish its own presence and pings, answers to the
/// requests it receives, appends to and reads of the logs of the partitions it holds (and the
/// key bucket's info); subscribe to its partitions' requests, its own ping, presence and
/// inbox, `$SRV`, and its partitions' commit hints. No stream can be created, changed,
/// purged or deleted from `NODES` at all: those subjects are not imported.
pub fn node(map: &PartitionMap, node: NodeId) -> Permissions {
    let mut publish = vec![
        subjects::presence(node),
        subjects::node_ping(node),
        format!("{}>", subjects::IMPORTED_REPLY_PREFIX),
        format!("{}{node}.>", subjects::INBOX_PREFIX),
    ];
    let mut subscribe = vec![
        format!("ringstore.node.{node}.>"),
        subjects::presence(node),
        "$SRV.>".to_owned(),
        format!("{}{node}.>", subjects::INBOX_PREFIX),
    ];
    for (p, role) in map.hosted(node) {
        publish.push(subjects::log_filter(p));
        publish.push(subjects::committed_filter(p));
        publish.extend(log_reads(p));
        subscribe.push(format!("{}.>", subjects::partition_group(p, role)));
        subscribe.push(subjects::committed_filter(p));
    }
    publish.push(key_bucket()[0].clone());
    publish.extend(map_reads());
    Permissions { publish, subscribe }
}

/// What a gateway may do under `map`: requests to every partition and node ping, `$SRV`,
/// reads of every log, the key bucket; subscribe to its own inbox and the commit hints.
pub fn gateway(map: &PartitionMap) -> Permissions {
    let mut publish = vec![
        "ringstore.part.>".to_owned(),
        "ringstore.node.*.ping".to_owned(),
        "$SRV.>".to_owned(),
    ];
    for p in map.all() {
        publish.push(format!("$JS.API.STREAM.INFO.{}", subjects::stream_name(p)));
        publish.push(subjects::direct_get(p));
    }
    publish.extend(key_bucket());
    publish.extend(map_reads());
    Permissions {
        publish,
        subscribe: vec![
            format!("{}gateway.>", subjects::INBOX_PREFIX),
            subjects::COMMITTED_ALL.to_owned(),
        ],
    }
}

/// One service (or stream) that crosses from one account to another.
struct Crossing {
    subject: String,
    stream: bool,
    to: Vec<&'static str>,
    /// The answer may be several messages.
    streamed: bool,
}

/// Everything `RING` and `NODES` export, and to whom.
fn crossings(map: &PartitionMap) -> (Vec<Crossing>, Vec<Crossing>) {
    let service = |subject: String, to: &[&'static str], streamed| Crossing {
        subject,
        stream: false,
        to: to.to_vec(),
        streamed,
    };
    let both = [NODES_ACCOUNT, GATEWAY_ACCOUNT];
    let mut ring = vec![
        service("ringstore.log.>".to_owned(), &[NODES_ACCOUNT], false),
        // An account without JetStream of its own gets the server's "JetStream not enabled"
        // answer to every `$JS.API.>` request, racing the imported ones, unless it imports the
        // account info from where its JetStream is: nats-server then leaves the imports alone.
        // (No user may publish it; the import is there for its effect.)
        service("$JS.API.INFO".to_owned(), &both, false),
    ];
    for p in map.all() {
        let stream = subjects::stream_name(p);
        ring.push(service(
            format!("$JS.API.STREAM.INFO.{stream}"),
            &both,
            false,
        ));
        ring.push(service(subjects::direct_get(p), &both, true));
        ring.push(service(
            format!("{}.>", subjects::direct_get(p)),
            &[NODES_ACCOUNT],
            false,
        ));
        ring.push(service(
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            &[NODES_ACCOUNT],
            false,
        ));
    }
    let bucket = key_bucket();
    ring.push(service(bucket[0].clone(), &both, false));
    ring.push(service(bucket[1].clone(), &[GATEWAY_ACCOUNT], false));
    ring.push(service(bucket[2].clone(), &[GATEWAY_ACCOUNT], false));
    for subject in map_reads() {
        ring.push(service(subject, &both, false));
    }
    let to = [GATEWAY_ACCOUNT, RING_ACCOUNT];
    let nodes = vec![
        // The writers' commit hints, for the gateways' change feeds (the dbnodes hear them in
        // their own account).
        Crossing {
            subject: subjects::COMMITTED_ALL.to_owned(),
            stream: true,
            to: to.to_vec(),
            streamed: false,
        },
        service("ringstore.part.>".to_owned(), &to, false),
        service("ringstore.node.*.ping".to_owned(), &to, false),
        service("$SRV.>".to_owned(), &to, true),
        Crossing {
            subject: "ringstore.presence.>".to_owned(),
            stream: true,
            to: vec![RING_ACCOUNT],
            streamed: false,
        },
    ];
    (ring, nodes)
}

fn quoted(subjects: &[String]) -> String {
    let items: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    items.join(", ")
}

fn exports(out: &mut String, crossings: &[Crossing]) {
    out.push_str("    exports: [\n");
    for c in crossings {
        let kind = if c.stream { "stream" } else { "service" };
        let mut line = format!(
            "      {{ {kind}: \"{}\", accounts: [{}]",
            c.subject,
            c.to.join(", ")
        );
        if c.streamed {
            line.push_str(&format!(
                ", response_type: stream, response_threshold: \"{STREAMED_RESPONSES}\""
            ));
        }
        out.push_str(&line);
        out.push_str(" }\n");
    }
    out.push_str("    ]\n");
}

fn imports(out: &mut String, from: &str, crossings: &[Crossing], account: &str) {
    for c in crossings.iter().filter(|c| c.to.contains(&account)) {
        let kind = if c.stream { "stream" } else { "service" };
        out.push_str(&format!(
            "      {{ {kind}: {{ account: {from}, subject: \"{}\" }} }}\n",
            c.subject
        ));
    }
}

fn user(out: &mut String, name: &str, permissions: Option<&Permissions>) {
    let var = password_var(name);
    match permissions {
        None => out.push_str(&format!("      {{ user: {name}, password: ${var} }}\n")),
        Some(p) => out.push_str(&format!(
            "      {{ user: {name}, password: ${var}, permissions: {{\n          \
             publish: {{ allow: [{}] }}\n          subscribe: {{ allow: [{}] }}\n      }} }}\n",
            quoted(&p.publish),
            quoted(&p.subscribe)
        )),
    }
}

/// The whole `nats.conf` for `map`'s ring: server settings, then the three accounts.
pub fn render(map: &PartitionMap) -> String {
    let (ring, node_exports) = crossings(map);
    let mut out = String::from(HEADER);
    out.push_str("\n# Identities and passwords (each from the environment; unset = the server refuses to start):\n");
    out.push_str(&format!(
        "#   {:<24} user admin     (account RING)\n",
        password_var("admin")
    ));
    out.push_str(&format!(
        "#   {:<24} user gateway   (account GW)\n",
        password_var("gateway")
    ));
    for &n in map.nodes() {
        let held: Vec<String> = map
            .hosted(n)
            .iter()
            .map(|(p, role)| match role {
                Role::Primary => format!("primary of P{p}"),
                Role::Replica => format!("replica of P{p}"),
            })
            .collect();
        out.push_str(&format!(
            "#   {:<24} user {n:<8} (account NODES: {})\n",
            password_var(&n.to_string()),
            held.join(", ")
        ));
    }
    out.push_str("accounts {\n");
    // RING
    out.push_str(&format!(
        "  {RING_ACCOUNT}: {{\n    jetstream: enabled\n    users: [\n"
    ));
    user(&mut out, "admin", None);
    out.push_str("    ]\n");
    exports(&mut out, &ring);
    out.push_str("    imports: [\n");
    imports(&mut out, NODES_ACCOUNT, &node_exports, RING_ACCOUNT);
    out.push_str("    ]\n  }\n");
    // NODES
    out.push_str(&format!("  {NODES_ACCOUNT}: {{\n    users: [\n"));
    for &n in map.nodes() {
        user(&mut out, &n.to_string(), Some(&node(map, n)));
    }
    out.push_str("    ]\n");
    exports(&mut out, &node_exports);
    out.push_str("    imports: [\n");
    imports(&mut out, RING_ACCOUNT, &ring, NODES_ACCOUNT);
    out.push_str("    ]\n  }\n");
    // GW
    out.push_str(&format!("  {GATEWAY_ACCOUNT}: {{\n    users: [\n"));
    user(&mut out, "gateway", Some(&gateway(map)));
    out.push_str("    ]\n    imports: [\n");
    imports(&mut out, RING_ACCOUNT, &ring, GATEWAY_ACCOUNT);
    imports(&mut out, NODES_ACCOUNT, &node_exports, GATEWAY_ACCOUNT);
    out.push_str("    ]\n  }\n}\n");
    out
}

/// The server settings every deployment shares, before the accounts.
const HEADER: &str = r#"# ringstore's NATS server: JetStream for the replication logs, three accounts, one identity
# per role and one per dbnode, each allowed only what its job needs (docs/security.md).
#
# GENERATED by `scripts/nats-conf` from the partition map (protocol/src/access.rs): do not
# edit by hand; a test fails when this file and the generator disagree.
#
# Used unchanged by the ringstore/nats image and docker-compose.yaml (/etc/nats/nats.conf), by
# scripts/cluster and by the cluster tests (integration-tests). The JetStream store directory
# is always given on the command line (`-sd`; nats-server refuses it in both places): the
# image passes `-sd /data/jetstream` (a volume), the local cluster `.cluster/js`, the tests a
# temp dir. The tests also override the ports (`-p`, `-m`).
#
# The passwords come from the environment; the server refuses to start when one is unset, so
# it never runs open (scripts/compose-env makes random ones for compose; scripts/cluster uses
# `<user>-local` on loopback; the tests make their own). The processes take their user and
# password from NATS_USER / NATS_PASSWORD, and receive replies under `_INBOX.<user>.`.

port: 4222

# Monitoring (/healthz, /varz, /connz, /jsz); the containers' healthcheck uses /healthz.
http_port: 8222

# The server pings every client every 2 s and drops one that misses 2 pongs: a paused or
# vanished process is noticed within ~4-6 s, and its subscriptions stop taking requests.
ping_interval: "2s"
ping_max: 2

# sync_interval: always: JetStream fsyncs every append before acknowledging it, so an
# acknowledged write survives a host crash or power loss, not only a process crash; JetStream's
# default (flush every 2 minutes) can lose the last two minutes of acknowledged writes when
# every server holding a log loses power at once, which is what one Docker host running all
# three servers means. It costs about 40 % of write throughput (README, "Durability", measured
# by bench/durability); a cluster spread over hosts with independent power may choose the
# default instead.
jetstream {
  max_memory_store: 64MB
  max_file_store: 4GB
  sync_interval: always
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repositorys_nats_conf_is_the_generators() {
        let committed = include_str!("../../nats.conf");
        let map = PartitionMap::initial(crate::DEFAULT_PARTITIONS, 3).unwrap();
        let generated = render(&map);
        assert!(
            committed == generated,
            "nats.conf is not what protocol/src/access.rs renders; run scripts/nats-conf"
        );
    }

    #[test]
    fn a_node_reaches_only_the_logs_it_holds() {
        let map = PartitionMap::initial(12, 5).unwrap();
        for &n in map.nodes() {
            let rights = node(&map, n);
            let held: Vec<_> = map.hosted(n).into_iter().map(|(p, _)| p).collect();
            for p in map.all() {
                let log = format!("ringstore.log.{p}.>");
                let stream = format!("{}.", subjects::stream_name(p));
                let reaches = rights.publish.contains(&log)
                    || rights
                        .publish
                        .iter()
                        .any(|s| format!("{s}.").contains(&stream));
                assert_eq!(reaches, held.contains(&p), "{n} and P{p}");
            }
            assert!(!rights.publish.iter().any(|s| s.starts_with("$SRV")));
            assert!(!rights
                .publish
                .iter()
                .any(|s| s.contains("CONSUMER") || s.contains("CREATE")));
        }
    }

    #[test]
    fn only_the_operator_writes_the_map() {
        let map = PartitionMap::initial(12, 3).unwrap();
        let writes_map = |rights: &Permissions| {
            rights
                .publish
                .iter()
                .any(|s| s.contains(subjects::MAP_BUCKET) && !s.starts_with("$JS.API."))
        };
        assert!(!writes_map(&gateway(&map)));
        assert!(map.nodes().iter().all(|&n| !writes_map(&node(&map, n))));
        assert!(gateway(&map)
            .publish
            .contains(&format!("$JS.API.DIRECT.GET.KV_{}.>", subjects::MAP_BUCKET)));
    }

    #[test]
    fn passwords_are_named_after_their_users() {
        assert_eq!(password_var("db-0"), "NATS_DB0_PASSWORD");
        assert_eq!(password_var("gateway"), "NATS_GATEWAY_PASSWORD");
    }
}
