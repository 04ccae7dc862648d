//! `ringstore status`: the partition map, what each of its nodes says of itself (its ping
//! answer), and each partition's log (its stream's info), put side by side; every way the ring
//! falls short of "every partition served by all its copies, caught up, on a log with a
//! leader" is listed as a problem.

use std::collections::BTreeMap;

use anyhow::Context;
use protocol::{subjects, NodeId, NodeState, PartitionId, PartitionMap, Presence, Role};
use serde::Serialize;

use crate::ASK_TIMEOUT;

/// One copy of a partition, as its node reports it.
#[derive(Debug, Serialize)]
struct Copy {
    node: NodeId,
    role: Role,
    /// The node answered its ping, ready, and announces this copy.
    ready: bool,
    applied: Option<u64>,
    lag: Option<u64>,
}

/// A partition's log, as its stream's info says.
#[derive(Debug, Serialize)]
struct Log {
    last_seq: u64,
    records: u64,
    /// The server leading the log's Raft group (`None` on one server, or without a leader).
    leader: Option<String>,
    clustered: bool,
    /// The other servers holding it: name and whether it is current.
    replicas: Vec<(String, bool)>,
}

#[derive(Debug, Serialize)]
struct PartitionStatus {
    partition: PartitionId,
    copies: Vec<Copy>,
    log: Option<Log>,
}

#[derive(Debug, Serialize)]
struct NodeStatus {
    node: NodeId,
    /// `None`: no answer to its ping.
    state: Option<NodeState>,
    primary_of: Vec<PartitionId>,
    replica_of: Vec<PartitionId>,
}

#[derive(Debug, Serialize)]
struct Status {
    map_epoch: u64,
    map_revision: u64,
    nodes: Vec<NodeStatus>,
    partitions: Vec<PartitionStatus>,
    problems: Vec<String>,
}

/// Asks node `node` how it is; `None` when it does not answer in time.
async fn ping(client: &async_nats::Client, node: NodeId) -> Option<Presence> {
    let ask = client.request(subjects::node_ping(node), "".into());
    let answer = tokio::time::timeout(ASK_TIMEOUT, ask).await.ok()?.ok()?;
    serde_json::from_slice(&answer.payload).ok()
}

async fn log_status(js: &async_nats::jetstream::Context, p: PartitionId) -> Result<Log, String> {
    let stream = js
        .get_stream(subjects::stream_name(p))
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.cached_info();
    // A lone server reports itself as "leader" of a cluster without a name.
    let cluster = info.cluster.as_ref().filter(|c| c.name.is_some());
    Ok(Log {
        last_seq: info.state.last_sequence,
        records: info.state.messages,
        leader: cluster.and_then(|c| c.leader.clone()),
        clustered: cluster.is_some(),
        replicas: cluster
            .map(|c| {
                c.replicas
                    .iter()
                    .map(|r| (r.name.clone(), r.current))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn copy(presences: &BTreeMap<NodeId, Presence>, node: NodeId, p: PartitionId, role: Role) -> Copy {
    let presence = presences.get(&node);
    let announced = presence.and_then(|pr| {
        pr.partitions
            .iter()
            .find(|c| c.partition == p && c.role == role)
    });
    Copy {
        node,
        role,
        ready: presence.is_some_and(|pr| pr.state == NodeState::Ready) && announced.is_some(),
        applied: announced.map(|c| c.applied),
        lag: announced.map(|c| c.lag),
    }
}

/// What is wrong with partition `s`.
fn problems_of(s: &PartitionStatus, problems: &mut Vec<String>) {
    let p = s.partition;
    for c in &s.copies {
        if !c.ready {
            problems.push(format!(
                "P{p}: its {} on {} is not ready",
                c.role.as_str(),
                c.node
            ));
        } else if c.lag.unwrap_or(0) > 0 {
            problems.push(format!(
                "P{p}: its {} on {} lags its log by {}",
                c.role.as_str(),
                c.node,
                c.lag.unwrap_or(0)
            ));
        }
    }
    match &s.log {
        None => problems.push(format!("P{p}: its log did not answer")),
        Some(log) if log.clustered && log.leader.is_none() => {
            problems.push(format!("P{p}: its log has no leader"))
        }
        Some(log) => {
            for (server, current) in &log.replicas {
                if !current {
                    problems.push(format!("P{p}: log replica {server} is not current"));
                }
            }
        }
    }
}

async fn gather(client: &async_nats::Client) -> anyhow::Result<Status> {
    let (map, revision) = runtime::map::read(client)
        .await
        .context("reading the partition map")?;
    let pings = futures::future::join_all(map.nodes().iter().map(|&n| ping(client, n))).await;
    let presences: BTreeMap<NodeId, Presence> = map
        .nodes()
        .iter()
        .zip(pings)
        .filter_map(|(&n, answer)| Some((n, answer?)))
        .filter(|(n, answer)| answer.node == *n)
        .collect();
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(ASK_TIMEOUT);
    let logs = futures::future::join_all(map.all().map(|p| log_status(&js, p))).await;
    let mut problems = Vec::new();
    let partitions: Vec<PartitionStatus> = map
        .all()
        .zip(logs)
        .map(|(p, log)| {
            let holders = std::iter::once((map.primary(p), Role::Primary))
                .chain(map.replica(p).map(|n| (n, Role::Replica)));
            let status = PartitionStatus {
                partition: p,
                copies: holders
                    .map(|(n, role)| copy(&presences, n, p, role))
                    .collect(),
                log: log.ok(),
            };
            problems_of(&status, &mut problems);
            status
        })
        .collect();
    let nodes = map
        .nodes()
        .iter()
        .map(|&node| node_status(&map, &presences, node, &mut problems))
        .collect();
    Ok(Status {
        map_epoch: map.epoch,
        map_revision: revision,
        nodes,
        partitions,
        problems,
    })
}

fn node_status(
    map: &PartitionMap,
    presences: &BTreeMap<NodeId, Presence>,
    node: NodeId,
    problems: &mut Vec<String>,
) -> NodeStatus {
    let state = presences.get(&node).map(|p| p.state);
    if state.is_none() {
        problems.push(format!("{node} does not answer its ping"));
    }
    let held = |role| {
        map.hosted(node)
            .into_iter()
            .filter(|&(_, r)| r == role)
            .map(|(p, _)| p)
            .collect()
    };
    NodeStatus {
        node,
        state,
        primary_of: held(Role::Primary),
        replica_of: held(Role::Replica),
    }
}

fn list(ps: &[PartitionId]) -> String {
    let all: Vec<String> = ps.iter().map(|p| format!("P{p}")).collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(" ")
    }
}

fn print_table(s: &Status) {
    println!(
        "partition map: epoch {}, {} partitions over {} nodes (revision {})\n",
        s.map_epoch,
        s.partitions.len(),
        s.nodes.len(),
        s.map_revision
    );
    println!(
        "{:<8} {:<12} {:<28} REPLICA OF",
        "NODE", "STATE", "PRIMARY OF"
    );
    for n in &s.nodes {
        let state = match n.state {
            Some(NodeState::Ready) => "ready",
            Some(NodeState::CatchingUp) => "catching-up",
            None => "silent",
        };
        let (primary, replica) = (list(&n.primary_of), list(&n.replica_of));
        println!(
            "{:<8} {state:<12} {primary:<28} {replica}",
            n.node.to_string()
        );
    }
    println!(
        "\n{:<5} {:<18} {:<18} {:>9} {:>9}  LOG LEADER / REPLICAS",
        "PART", "PRIMARY", "REPLICA", "LOG END", "RECORDS"
    );
    for p in &s.partitions {
        let copy = |role| {
            p.copies
                .iter()
                .find(|c| c.role == role)
                .map_or("-".into(), |c| {
                    let state = if c.ready { "ready" } else { "DOWN" };
                    format!("{} {state} @{}", c.node, c.applied.unwrap_or(0))
                })
        };
        let (end, records, servers) = match &p.log {
            Some(log) => {
                let replicas: Vec<String> = log
                    .replicas
                    .iter()
                    .map(|(name, current)| {
                        format!("{name}{}", if *current { "" } else { " (behind)" })
                    })
                    .collect();
                let servers = match (&log.leader, log.clustered) {
                    (_, false) => "one server".to_owned(),
                    (Some(leader), true) => format!("{leader} / {}", replicas.join(", ")),
                    (None, true) => "NO LEADER".to_owned(),
                };
                (log.last_seq.to_string(), log.records.to_string(), servers)
            }
            None => ("?".into(), "?".into(), "no answer".into()),
        };
        println!(
            "P{:<4} {:<18} {:<18} {end:>9} {records:>9}  {servers}",
            p.partition,
            copy(Role::Primary),
            copy(Role::Replica)
        );
    }
    println!();
    if s.problems.is_empty() {
        println!(
            "OK: every partition is served by all its copies, caught up, on a log with a leader"
        );
    } else {
        println!("{} PROBLEM(S):", s.problems.len());
        for problem in &s.problems {
            println!("  - {problem}");
        }
    }
}

/// Prints the status; `Ok(true)` when there is no problem.
pub async fn run(client: &async_nats::Client, json: bool) -> anyhow::Result<bool> {
    let status = gather(client).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(status.problems.is_empty())
}
