//! `ringstore verify`: every copy of every partition compared with its log.
//!
//! A copy is read page by page through the partition's own `scan` (as LIST does, addressed to
//! the copy's role), each page answered with the log sequence the copy had applied (`seen`);
//! then the log is read whole by direct gets (each record's latest entry). A copy applies its
//! log in order, so for every record whose latest entry — read after the copy — is at or below
//! the lowest `seen` of the scan, the entry was already applied and not superseded when the
//! copy's page was read: the copy must hold exactly that entry's record (or nothing, for a
//! tombstone), and it must hold no record the log does not name. Records written during the check (latest entry past
//! that sequence) are counted as not compared. Each side of the comparison gets a digest
//! (SHA-256 over the compared records in id order), and every differing record is named.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use protocol::{
    subjects, timing, LogEntry, NodeId, Op, PartitionId, PartitionMap, Reply, Role, ScanRequest,
    User,
};
use runtime::LogReader;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ASK_TIMEOUT;

/// Records per scan page.
const PAGE: u32 = 500;

/// The log's view of a partition: each record's latest entry (sequence and record).
pub(crate) struct LogState {
    pub(crate) records: BTreeMap<String, (u64, Option<User>)>,
}

/// One copy, as its scan answered.
pub(crate) struct CopyState {
    pub(crate) records: BTreeMap<String, User>,
    /// The lowest sequence any page was consistent with.
    pub(crate) seen: u64,
}

#[derive(Debug, Serialize)]
struct CopyReport {
    partition: PartitionId,
    node: NodeId,
    role: Role,
    /// Applied log sequence the comparison holds at (the scan's lowest).
    at_seq: u64,
    compared: usize,
    /// Records written during the check, not compared.
    changed_during: usize,
    digest_log: String,
    digest_copy: String,
    /// Ids whose copy differs from the log (at most 20 listed).
    differing: Vec<String>,
    differing_count: usize,
    /// Why the copy could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) async fn read_log(
    client: &async_nats::Client,
    p: PartitionId,
) -> anyhow::Result<LogState> {
    let mut reader = LogReader::open(client.clone(), p, ASK_TIMEOUT).await?;
    let mut records = BTreeMap::new();
    crate::log::read_to_end(&mut reader, 1, |m| {
        if let Ok(entry) = serde_json::from_slice::<LogEntry>(&m.payload) {
            records.insert(entry.id.clone(), (m.seq, entry.record));
        }
        Ok(())
    })
    .await?;
    Ok(LogState { records })
}

async fn scan_page(
    client: &async_nats::Client,
    p: PartitionId,
    role: Role,
    after: Option<String>,
) -> anyhow::Result<(Vec<User>, bool, u64)> {
    let request = ScanRequest {
        after,
        limit: PAGE,
        group: None,
        min_seq: 0,
        epoch: 0,
        deadline: timing::deadline_in(ASK_TIMEOUT),
    };
    let subject = subjects::request(p, role, Op::Scan);
    let response = crate::ask(client, subject.clone(), &request).await?;
    match response.answer {
        Ok(Reply::Page { items, more }) => Ok((items, more, response.seen)),
        Ok(other) => bail!("{subject}: not a page: {other:?}"),
        Err(e) => bail!("{subject}: refused: {e}"),
    }
}

pub(crate) async fn read_copy(
    client: &async_nats::Client,
    p: PartitionId,
    role: Role,
) -> anyhow::Result<CopyState> {
    let mut records = BTreeMap::new();
    let mut seen = u64::MAX;
    let mut after = None;
    loop {
        let (items, more, page_seen) = scan_page(client, p, role, after.clone()).await?;
        seen = seen.min(page_seen);
        after = items.last().map(|u| u.id.clone());
        for user in items {
            records.insert(user.id.clone(), user);
        }
        if !more || after.is_none() {
            return Ok(CopyState { records, seen });
        }
    }
}

/// SHA-256 (first 8 bytes, hex) over `records` in id order: the digest `verify`, `backup`
/// and `restore` all state.
pub(crate) fn digest<'a>(records: impl Iterator<Item = (&'a String, &'a User)>) -> String {
    let mut hash = Sha256::new();
    for (id, user) in records {
        hash.update(id.as_bytes());
        hash.update([0]);
        hash.update(serde_json::to_vec(user).expect("users serialise"));
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

/// Compares `copy` with `log` as the module says.
fn compare(log: &LogState, copy: &CopyState) -> (usize, usize, String, String, Vec<String>) {
    let mut expected = BTreeMap::new();
    let mut changed = 0;
    for (id, (seq, record)) in &log.records {
        if *seq > copy.seen {
            changed += 1;
        } else if let Some(user) = record {
            expected.insert(id, user);
        }
    }
    let mut held = BTreeMap::new();
    let mut differing = Vec::new();
    for (id, user) in &copy.records {
        match log.records.get(id) {
            Some((seq, _)) if *seq > copy.seen => {}
            _ => {
                held.insert(id, user);
                if expected.get(id) != Some(&user) {
                    differing.push(id.clone());
                }
            }
        }
    }
    for id in expected.keys() {
        if !held.contains_key(id) {
            differing.push((*id).clone());
        }
    }
    differing.sort();
    let compared = expected.len().max(held.len());
    let digest_log = digest(expected.into_iter());
    let digest_copy = digest(held.into_iter());
    (compared, changed, digest_log, digest_copy, differing)
}

async fn verify_partition(
    client: &async_nats::Client,
    map: &PartitionMap,
    p: PartitionId,
) -> anyhow::Result<Vec<CopyReport>> {
    let holders: Vec<(NodeId, Role)> = std::iter::once((map.primary(p), Role::Primary))
        .chain(map.replica(p).map(|n| (n, Role::Replica)))
        .collect();
    let mut copies = Vec::new();
    for &(_, role) in &holders {
        copies.push(read_copy(client, p, role).await);
    }
    // After the copies: a record whose latest entry is at or below a copy's sequence now was
    // already there, and unchanged since, when the copy's page was read.
    let log = read_log(client, p)
        .await
        .with_context(|| format!("reading P{p}'s log"))?;
    let mut reports = Vec::new();
    for ((node, role), copy) in holders.into_iter().zip(copies) {
        let mut report = CopyReport {
            partition: p,
            node,
            role,
            at_seq: 0,
            compared: 0,
            changed_during: 0,
            digest_log: String::new(),
            digest_copy: String::new(),
            differing: Vec::new(),
            differing_count: 0,
            error: None,
        };
        match copy {
            Ok(copy) => {
                let (compared, changed, digest_log, digest_copy, differing) = compare(&log, &copy);
                report.at_seq = copy.seen;
                report.compared = compared;
                report.changed_during = changed;
                report.digest_log = digest_log;
                report.digest_copy = digest_copy;
                report.differing_count = differing.len();
                report.differing = differing.into_iter().take(20).collect();
            }
            Err(e) => report.error = Some(format!("{e:#}")),
        }
        reports.push(report);
    }
    Ok(reports)
}

/// `ringstore verify [--partition P]`; `Ok(true)` when every copy equals its log.
pub async fn run(
    client: &async_nats::Client,
    partition: Option<PartitionId>,
    json: bool,
) -> anyhow::Result<bool> {
    let (map, _) = runtime::map::read(client)
        .await
        .context("reading the partition map")?;
    let partitions: Vec<PartitionId> = match partition {
        Some(p) if p < map.count() => vec![p],
        Some(p) => bail!("there is no P{p}: the map has {} partitions", map.count()),
        None => map.all().collect(),
    };
    if !json {
        println!(
            "{:<5} {:<14} {:>9} {:>9} {:>8}  {:<16} {:<16} RESULT",
            "PART", "COPY", "AT SEQ", "COMPARED", "CHANGED", "LOG DIGEST", "COPY DIGEST"
        );
    }
    let mut all = Vec::new();
    for p in partitions {
        for r in verify_partition(client, &map, p).await? {
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let result = match (&r.error, r.differing_count) {
                    (Some(e), _) => format!("UNREADABLE: {e}"),
                    (None, 0) => "equal".to_owned(),
                    (None, n) => format!("DIFFERS in {n}: {}", r.differing.join(", ")),
                };
                println!(
                    "P{:<4} {:<14} {:>9} {:>9} {:>8}  {:<16} {:<16} {result}",
                    r.partition,
                    format!("{} {}", r.node, r.role.as_str()),
                    r.at_seq,
                    r.compared,
                    r.changed_during,
                    r.digest_log,
                    r.digest_copy
                );
            }
            all.push(r);
        }
    }
    let bad = all
        .iter()
        .filter(|r| r.error.is_some() || r.differing_count > 0)
        .count();
    if !json {
        println!();
        match bad {
            0 => println!("OK: {} copies equal their logs", all.len()),
            n => println!("{n} of {} copies do not equal their logs", all.len()),
        }
    }
    Ok(bad == 0)
}
