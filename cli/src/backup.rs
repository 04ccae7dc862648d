//! `ringstore backup` and `ringstore restore` (docs/operations.md "Backup and restore").
//!
//! A backup is one JSON-lines file: a header with the partition map, then every partition's
//! log entries in order, then a manifest naming, per partition, the cut (the last sequence
//! read), the entries, the live records and their digest (as `verify` computes it), and a
//! SHA-256 of every line before it. Each partition's log is read in order until nothing is
//! left to deliver, so the copy is exactly the log at its cut: an entry is deleted only by a
//! later one of the same record, and that later one is read before the reading ends.
//!
//! A restore goes into a fresh, provisioned deployment with the same partition count (it
//! refuses logs that hold anything), checks the file's checksum before writing anything,
//! writes each live record as a create (a restored log starts its sequences over, so versions
//! and ETags are new), and then proves itself: every partition's log and both of its copies,
//! read back, have the manifest's digest.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use async_nats::jetstream::message::PublishMessage;
use protocol::{subjects, LogEntry, PartitionId, PartitionMap, Role, User};
use runtime::LogReader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::verify;
use crate::ASK_TIMEOUT;

/// The format this code writes and reads.
const FORMAT: &str = "ringstore-backup/1";

/// Appends in flight during a restore.
const IN_FLIGHT: usize = 256;

/// How long a restore waits for the copies to apply what it wrote.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Header {
        format: String,
        map: PartitionMap,
    },
    Entry {
        partition: PartitionId,
        seq: u64,
        entry: LogEntry,
    },
    Manifest {
        partitions: Vec<PartitionManifest>,
        /// SHA-256 of every line before this one (with their newlines).
        body_sha256: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionManifest {
    partition: PartitionId,
    /// The last log sequence the backup holds.
    cut: u64,
    entries: u64,
    records: u64,
    digest: String,
}

/// Writes lines, hashing everything written.
struct Out<W: Write> {
    writer: W,
    hash: Sha256,
}

impl<W: Write> Out<W> {
    fn line(&mut self, line: &Line) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.writer.write_all(&bytes)?;
        Ok(())
    }
}

/// Reads partition `p`'s log to its end, writing each entry; returns its manifest.
async fn back_up_partition<W: Write>(
    client: &async_nats::Client,
    p: PartitionId,
    out: &mut Out<W>,
) -> anyhow::Result<PartitionManifest> {
    let mut reader = LogReader::open(client.clone(), p, ASK_TIMEOUT).await?;
    let (mut cut, mut entries) = (0, 0);
    let mut live: BTreeMap<String, User> = BTreeMap::new();
    crate::log::read_to_end(&mut reader, 1, |m| {
        cut = cut.max(m.seq);
        // Check markers and anything else that is not an entry change no record.
        let Ok(entry) = serde_json::from_slice::<LogEntry>(&m.payload) else {
            return Ok(());
        };
        match &entry.record {
            Some(user) => live.insert(entry.id.clone(), user.clone()),
            None => live.remove(&entry.id),
        };
        entries += 1;
        out.line(&Line::Entry {
            partition: p,
            seq: m.seq,
            entry,
        })
    })
    .await?;
    Ok(PartitionManifest {
        partition: p,
        cut,
        entries,
        records: live.len() as u64,
        digest: verify::digest(live.iter()),
    })
}

/// `ringstore backup <file>` (`-`: stdout).
pub async fn backup(client: &async_nats::Client, file: &str) -> anyhow::Result<bool> {
    let (map, _) = runtime::map::read(client)
        .await
        .context("reading the partition map")?;
    let (writer, temp): (Box<dyn Write>, Option<String>) = if file == "-" {
        (Box::new(std::io::stdout().lock()), None)
    } else {
        let temp = format!("{file}.partial");
        let f = std::fs::File::create(&temp).with_context(|| format!("creating {temp}"))?;
        (Box::new(std::io::BufWriter::new(f)), Some(temp))
    };
    let mut out = Out {
        writer,
        hash: Sha256::new(),
    };
    out.line(&Line::Header {
        format: FORMAT.into(),
        map: map.clone(),
    })?;
    let mut partitions = Vec::new();
    for p in map.all() {
        let manifest = back_up_partition(client, p, &mut out).await?;
        eprintln!(
            "P{p}: {} entries to sequence {}, {} records",
            manifest.entries, manifest.cut, manifest.records
        );
        partitions.push(manifest);
    }
    let body_sha256 = hex::encode(out.hash.clone().finalize());
    out.line(&Line::Manifest {
        partitions,
        body_sha256,
    })?;
    out.writer.flush()?;
    drop(out);
    if let Some(temp) = temp {
        std::fs::rename(&temp, file).with_context(|| format!("renaming {temp} to {file}"))?;
        eprintln!("wrote {file}");
    }
    Ok(true)
}

/// A backup file read whole and checked against its own manifest.
struct Backup {
    map: PartitionMap,
    entries: BTreeMap<PartitionId, Vec<LogEntry>>,
    manifest: Vec<PartitionManifest>,
}

fn read_backup(file: &str) -> anyhow::Result<Backup> {
    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let (mut map, mut manifest) = (None, None);
    let mut entries: BTreeMap<PartitionId, Vec<LogEntry>> = BTreeMap::new();
    let mut hash = Sha256::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let parsed: Line = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a backup line", n + 1))?;
        match parsed {
            Line::Manifest {
                partitions,
                body_sha256,
            } => {
                let body = hex::encode(hash.clone().finalize());
                ensure!(
                    body == body_sha256,
                    "the file's checksum does not match its manifest: it is damaged"
                );
                manifest = Some(partitions);
            }
            _ if manifest.is_some() => bail!("line {}: after the manifest", n + 1),
            Line::Header { format, map: m } => {
                ensure!(format == FORMAT, "not a {FORMAT} file ({format})");
                map = Some(m);
            }
            Line::Entry {
                partition, entry, ..
            } => entries.entry(partition).or_default().push(entry),
        }
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    let map = map.context("no header: not a ringstore backup")?;
    let manifest = manifest.context("no manifest: the file is incomplete")?;
    ensure!(
        manifest.len() == map.count() as usize,
        "the manifest does not cover every partition"
    );
    Ok(Backup {
        map,
        entries,
        manifest,
    })
}

/// Writes partition `p`'s live records as creates; returns the restored log's last sequence.
async fn restore_partition(
    js: &async_nats::jetstream::Context,
    p: PartitionId,
    entries: &[LogEntry],
) -> anyhow::Result<u64> {
    let mut latest: BTreeMap<&str, &LogEntry> = BTreeMap::new();
    for entry in entries {
        latest.insert(&entry.id, entry);
    }
    let mut last = 0;
    let mut acks = Vec::new();
    for entry in latest.values().filter(|e| e.record.is_some()) {
        let restored = LogEntry {
            group_before: None,
            seq_before: Some(0),
            ..(*entry).clone()
        };
        let message = PublishMessage::build()
            .payload(serde_json::to_vec(&restored)?.into())
            .expected_last_subject_sequence(0);
        let ack = js
            .send_publish(subjects::log_subject(p, &entry.id), message)
            .await
            .with_context(|| format!("writing P{p}"))?;
        acks.push(ack);
        if acks.len() >= IN_FLIGHT {
            for ack in acks.drain(..) {
                last = last.max(
                    ack.await
                        .with_context(|| format!("P{p}: the log refused an entry"))?
                        .sequence,
                );
            }
        }
    }
    for ack in acks {
        last = last.max(
            ack.await
                .with_context(|| format!("P{p}: the log refused an entry"))?
                .sequence,
        );
    }
    Ok(last)
}

/// Waits until copy `role` of `p` has applied `last`, then returns its digest and count.
async fn copy_digest(
    client: &async_nats::Client,
    p: PartitionId,
    role: Role,
    last: u64,
) -> anyhow::Result<(String, usize)> {
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    loop {
        match verify::read_copy(client, p, role).await {
            Ok(copy) if copy.seen >= last => {
                return Ok((verify::digest(copy.records.iter()), copy.records.len()))
            }
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(copy) => bail!("P{p} {}: applied {} of {last}", role.as_str(), copy.seen),
            Err(e) => return Err(e),
        }
    }
}

/// `ringstore restore <file>` (`-`: stdin); `Ok(true)` when the restore proved itself.
pub async fn restore(client: &async_nats::Client, file: &str, json: bool) -> anyhow::Result<bool> {
    let backup = read_backup(file)?;
    let (map, _) = runtime::map::read(client)
        .await
        .context("reading the target's partition map (provision it first)")?;
    ensure!(
        map.count() == backup.map.count(),
        "the backup has {} partitions, this deployment {}: restore into one provisioned with \
         PARTITIONS={}",
        backup.map.count(),
        map.count(),
        backup.map.count()
    );
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(ASK_TIMEOUT);
    for p in map.all() {
        let stream = js.get_stream(subjects::stream_name(p)).await?;
        let held = stream.cached_info().state.messages;
        ensure!(
            held == 0,
            "P{p}'s log holds {held} entries: restore goes into a fresh deployment only"
        );
    }
    let mut rows = Vec::new();
    let mut proved = true;
    for m in &backup.manifest {
        let p = m.partition;
        let entries = backup
            .entries
            .get(&p)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let last = restore_partition(&js, p, entries).await?;
        let log = verify::read_log(client, p).await?;
        let live: BTreeMap<String, User> = log
            .records
            .into_iter()
            .filter_map(|(id, (_, user))| Some((id, user?)))
            .collect();
        let log_digest = verify::digest(live.iter());
        let mut row = serde_json::json!({
            "partition": p, "records": m.records, "manifest_digest": m.digest,
            "log_digest": log_digest,
        });
        let mut ok = log_digest == m.digest && live.len() as u64 == m.records;
        let holders = [Some(Role::Primary), map.replica(p).map(|_| Role::Replica)];
        for role in holders.into_iter().flatten() {
            let (digest, _) = copy_digest(client, p, role, last).await?;
            ok &= digest == m.digest;
            row[format!("{}_digest", role.as_str())] = digest.into();
        }
        row["proved"] = ok.into();
        proved &= ok;
        if json {
            println!("{row}");
        } else {
            println!(
                "P{p:<4} {:>7} records  manifest {}  log {}  copies {} {}  {}",
                m.records,
                m.digest,
                row["log_digest"].as_str().unwrap_or("-"),
                row["primary_digest"].as_str().unwrap_or("-"),
                row["replica_digest"].as_str().unwrap_or("-"),
                if ok { "proved" } else { "DIFFERS" }
            );
        }
        rows.push(row);
    }
    if !json {
        match proved {
            true => println!("OK: every partition's log and copies equal the backup's manifest"),
            false => println!("FAILED: a restored partition does not equal the manifest"),
        }
    }
    Ok(proved)
}
