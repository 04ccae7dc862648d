//! `ringstore log tail`: a partition's log (or every partition's) as people read it, through
//! the same consumer-free direct gets the nodes use (runtime's `LogReader`), and with
//! `--follow` woken by the writers' commit hints.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use protocol::{subjects, LogEntry, PartitionId, PartitionMap};
use runtime::{LogMessage, LogReader};
use serde::Serialize;

use crate::ASK_TIMEOUT;

/// How often `--follow` reads the logs when no commit hint comes.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Only this partition (default: every partition, each in turn).
    #[arg(long)]
    partition: Option<PartitionId>,
    /// Only the entries of this record (its partition is computed from it).
    #[arg(long)]
    id: Option<String>,
    /// From this log sequence on (default: the start).
    #[arg(long, default_value_t = 1)]
    since: u64,
    /// Keep printing new entries as they are committed (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
}

/// One entry, decoded.
#[derive(Debug, Serialize)]
struct Row {
    partition: PartitionId,
    seq: u64,
    time: String,
    /// The record id its subject names (hex-decoded).
    id: Option<String>,
    /// `create`, `update`, `delete`, `write` (an entry from before `seq_before`), `check`
    /// (a node's check marker) or `undecodable`.
    op: &'static str,
    /// The record's version after this entry (its sequence); `None` for a delete or a marker.
    version: Option<u64>,
    writer: Option<String>,
    request_id: Option<String>,
    /// Why the entry is suspect: no writer ringstore runs would have made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    suspect: Option<String>,
}

/// The record id a log subject names, `ringstore.log.{p}.{hex(id)}`.
fn subject_id(p: PartitionId, subject: &str) -> Option<String> {
    let hex = subject.strip_prefix(&format!("ringstore.log.{p}."))?;
    String::from_utf8(hex::decode(hex).ok()?).ok()
}

fn decode(map: &PartitionMap, p: PartitionId, m: &LogMessage) -> Row {
    let mut row = Row {
        partition: p,
        seq: m.seq,
        time: m.time.clone(),
        id: subject_id(p, &m.subject),
        op: "undecodable",
        version: None,
        writer: None,
        request_id: None,
        suspect: None,
    };
    if subjects::is_check_marker(&m.payload) {
        row.op = "check";
        return row;
    }
    let Ok(entry) = serde_json::from_slice::<LogEntry>(&m.payload) else {
        row.suspect = Some("not a log entry".into());
        return row;
    };
    row.op = match (&entry.record, entry.seq_before) {
        (None, _) => "delete",
        (Some(_), Some(0)) => "create",
        (Some(_), Some(_)) => "update",
        (Some(_), None) => "write",
    };
    row.version = entry.record.as_ref().map(|_| m.seq);
    let holders = [Some(map.primary(p)), map.replica(p)];
    if row.id.as_deref() != Some(entry.id.as_str()) {
        row.suspect = Some(format!(
            "its subject names another record than {:?}",
            entry.id
        ));
    } else if !holders.contains(&Some(entry.writer)) {
        row.suspect = Some(format!("{} does not hold P{p}", entry.writer));
    }
    row.writer = Some(entry.writer.to_string());
    row.request_id = Some(entry.request_id);
    row
}

fn print(row: &Row, json: bool) {
    if json {
        println!("{}", serde_json::to_string(row).expect("rows serialise"));
        return;
    }
    let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    println!(
        "{:>8}  {:<30}  P{:<3} {:<24} {:<7} {:>8}  {:<6} {}{}",
        row.seq,
        row.time,
        row.partition,
        dash(row.id.as_deref()),
        row.op,
        row.version.map_or("-".into(), |v| v.to_string()),
        dash(row.writer.as_deref()),
        dash(row.request_id.as_deref()),
        row.suspect
            .as_ref()
            .map_or(String::new(), |s| format!("  SUSPECT: {s}"))
    );
}

/// Reads `reader`'s log from `from` until nothing is left to deliver, handing each entry to
/// `each` in log order; returns the sequence after the last one read. (The commands that read
/// whole logs — tail, verify, backup — all read them so.)
pub(crate) async fn read_to_end(
    reader: &mut LogReader,
    from: u64,
    mut each: impl FnMut(&LogMessage) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let p = reader.partition();
    let mut next = from;
    loop {
        let batch = reader
            .fetch(next, 256)
            .await
            .with_context(|| format!("reading P{p}'s log"))?;
        for message in &batch.messages {
            next = next.max(message.seq + 1);
            each(message)?;
        }
        if batch.pending == Some(0) || batch.messages.is_empty() {
            return Ok(next);
        }
    }
}

/// Prints partition `p`'s entries from `from` until nothing is left; returns the next sequence.
async fn drain(
    reader: &mut LogReader,
    map: &PartitionMap,
    from: u64,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<u64> {
    let p = reader.partition();
    read_to_end(reader, from, |message| {
        let row = decode(map, p, message);
        if only.is_none_or(|id| row.id.as_deref() == Some(id)) {
            print(&row, json);
        }
        Ok(())
    })
    .await
}

/// `ringstore log tail`.
pub async fn tail(
    client: &async_nats::Client,
    args: &TailArgs,
    json: bool,
) -> anyhow::Result<bool> {
    let (map, _) = runtime::map::read(client)
        .await
        .context("reading the partition map")?;
    let partitions: Vec<PartitionId> = match (&args.id, args.partition) {
        (Some(id), _) => vec![map.partition_of(id)],
        (None, Some(p)) if p < map.count() => vec![p],
        (None, Some(p)) => {
            anyhow::bail!("there is no P{p}: the map has {} partitions", map.count())
        }
        (None, None) => map.all().collect(),
    };
    if !json {
        println!(
            "{:>8}  {:<30}  {:<4} {:<24} {:<7} {:>8}  {:<6} REQUEST",
            "SEQ", "TIME", "PART", "ID", "OP", "VERSION", "WRITER"
        );
    }
    let mut readers = Vec::new();
    for &p in &partitions {
        let reader = LogReader::open(client.clone(), p, ASK_TIMEOUT)
            .await
            .with_context(|| format!("opening P{p}'s log"))?;
        readers.push((reader, args.since));
    }
    let only = args.id.as_deref();
    for (reader, next) in &mut readers {
        *next = drain(reader, &map, *next, only, json).await?;
    }
    if !args.follow {
        return Ok(true);
    }
    let mut hints = client
        .subscribe(subjects::COMMITTED_ALL)
        .await
        .context("subscribing to the commit hints")?;
    loop {
        // A hint (or a quiet second) sends every followed log to be read again.
        let _ = tokio::time::timeout(FOLLOW_POLL, hints.next()).await;
        for (reader, next) in &mut readers {
            *next = drain(reader, &map, *next, only, json).await?;
        }
    }
}
