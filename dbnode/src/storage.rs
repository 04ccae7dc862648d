//! RocksDB storage: one column family per hosted partition, named [`partition_cf`].
//!
//! Keys inside a partition's column family:
//! - `r{id}` → the record and its version (JSON [`VersionedUser`]);
//! - `g{group:be32}{id}` → empty: the group index;
//! - `t{id}` → the sequence (be64) of the tombstone of a deleted record: with the record keys,
//!   every id's latest log sequence, which the writer's conditional appends name;
//! - `q{request_id}` → the write's outcome, for idempotent retries: when it was applied (Unix
//!   ms, be64), its log sequence (be64), then the JSON [`Reply`];
//! - `m/applied` → the last applied log sequence (be64); `m/log` → the identity of the log it
//!   was applied from (the stream's creation time, be64), so that a recreated log is noticed.
//!
//! Log entries are applied in `WriteBatch`es holding all of these, so a crash never leaves a
//! record without its index or applied sequence. Every key an apply writes is one more
//! memtable insert, the largest cost of a write here, so nothing is written that can be had
//! otherwise:
//! - record counts (total and per group) live in memory only, counted from the group index
//!   when the database opens (every record has one group) and kept by the applies;
//! - old outcomes are not deleted one by one: a compaction filter drops those older than the
//!   retention or more than the kept number of writes behind the applied sequence whenever
//!   RocksDB compacts them, and [`Storage::compact_outcomes`] compacts every outcome on demand
//!   (the node does so periodically), so the table stays bounded without a write of its own.
//!
//! Databases written before this layout also hold `o{seq}` (an outcome order index),
//! `c{group}` and `m/count` (stored counters): they are deleted at open, and their outcomes,
//! of unknown age, are dropped at their next compaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{LogEntry, PartitionId, Reply, User, VersionedUser};
use rocksdb::compaction_filter::Decision;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

const APPLIED: &[u8] = b"m/applied";
const LOG_IDENTITY: &[u8] = b"m/log";
/// The stored counters of databases written before counts were kept in memory only.
const LEGACY_COUNT: &[u8] = b"m/count";
/// The key ranges of the outcome order index and the per-group counters of those databases.
const LEGACY_RANGES: [(&[u8], &[u8]); 2] = [(b"o", b"p"), (b"c", b"d")];
/// The bytes before an outcome's JSON: when it was applied (Unix ms) and its sequence.
const OUTCOME_STAMP: usize = 16;

/// How long request outcomes answer retries (README: `OUTCOME_RETENTION_SECS`,
/// `OUTCOME_KEEP_WRITES`): an outcome is dropped once it is older than `age` or more than
/// `writes` log sequences behind its partition's applied one, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeRetention {
    /// The age after which an outcome is dropped.
    pub age: Duration,
    /// How many of a partition's latest sequences keep their outcomes.
    pub writes: u64,
}

impl Default for OutcomeRetention {
    fn default() -> Self {
        Self {
            age: Duration::from_secs(86_400),
            writes: 1_000_000,
        }
    }
}

/// The column family holding partition `p`.
pub fn partition_cf(p: PartitionId) -> String {
    format!("p{p}")
}

/// A storage failure: RocksDB or a value that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB returned an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value is not what we wrote.
    #[error("corrupt value: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The partition is not hosted here.
    #[error("partition {0} is not hosted by this node")]
    NotHosted(PartitionId),
    /// A group index key without its four-byte group.
    #[error("a group index key too short for its group")]
    BadKey,
    /// A stored outcome shorter than its stamp.
    #[error("a request outcome too short for its stamp")]
    BadOutcome,
}

/// The node's database, shared by every task.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    /// Per hosted partition, its applied sequence and record counts.
    slots: Arc<HashMap<PartitionId, Slot>>,
}

/// One log entry for [`Storage::apply_all`].
#[derive(Debug, Clone, Copy)]
pub struct Step<'e> {
    /// The entry's sequence.
    pub seq: u64,
    /// The entry; `None` steps over its sequence (a check marker, an entry that does not
    /// decode).
    pub entry: Option<&'e LogEntry>,
    /// The caller vouches that the copy holds the record as of the entry's `seq_before`, so
    /// that its stored group is the entry's `group_before` and is not read. The tailer knows
    /// it when the copy equals the log's prefix up to a sequence at or past `seq_before`.
    pub prior_held: bool,
}

impl<'e> From<(u64, Option<&'e LogEntry>)> for Step<'e> {
    /// A step that reads the record's stored group.
    fn from((seq, entry): (u64, Option<&'e LogEntry>)) -> Self {
        Self {
            seq,
            entry,
            prior_held: false,
        }
    }
}

/// What storage keeps in memory of one partition.
struct Slot {
    tally: Mutex<Tally>,
    /// The applied sequence as stored, shared with the outcome filter (which runs on RocksDB's
    /// threads); changed only with `tally` locked.
    applied: Arc<AtomicU64>,
}

/// A partition's record counts (counted at open, then kept by the applies). Only `apply_all`
/// and `reset` change them (one tailer per partition).
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    groups: HashMap<u32, u64>,
}

fn record_key(id: impl AsRef<[u8]>) -> Vec<u8> {
    [b"r", id.as_ref()].concat()
}

fn group_key(group: u32, id: &str) -> Vec<u8> {
    [&b"g"[..], &group.to_be_bytes(), id.as_bytes()].concat()
}

fn tombstone_key(id: &str) -> Vec<u8> {
    [b"t", id.as_bytes()].concat()
}

fn request_key(request_id: &str) -> Vec<u8> {
    [b"q", request_id.as_bytes()].concat()
}

/// `{applied at, Unix ms:be64}{seq:be64}{reply JSON}`.
fn outcome_value(seq: u64, reply: &Reply) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = Vec::with_capacity(OUTCOME_STAMP + 128);
    value.extend_from_slice(&protocol::timing::now_ms().to_be_bytes());
    value.extend_from_slice(&seq.to_be_bytes());
    serde_json::to_writer(&mut value, reply)?;
    Ok(value)
}

/// When an outcome was applied (Unix ms) and its sequence; `None` for an outcome of a database
/// written before outcomes were stamped (plain JSON, which starts with `{`, where a stamp
/// starts with the high byte of a millisecond clock, 0 for millennia).
fn outcome_stamp(value: &[u8]) -> Option<(u64, u64)> {
    if value.first() == Some(&b'{') || value.len() < OUTCOME_STAMP {
        return None;
    }
    Some((be64(Some(&value[..8])), be64(Some(&value[8..16]))))
}

/// The compaction filter of a partition's column family: drops the outcomes `retention` no
/// longer keeps (unstamped ones too: their age is unknown), keeps every other key.
fn outcome_filter(
    retention: OutcomeRetention,
    applied: Arc<AtomicU64>,
) -> impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static {
    move |_level, key, value| {
        if key.first() != Some(&b'q') {
            return Decision::Keep;
        }
        let Some((at, seq)) = outcome_stamp(value) else {
            return Decision::Remove;
        };
        let oldest = protocol::timing::now_ms().saturating_sub(retention.age.as_millis() as u64);
        let behind = seq.saturating_add(retention.writes) <= applied.load(Ordering::Relaxed);
        if at < oldest || behind {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }
}

fn be64(bytes: Option<impl AsRef<[u8]>>) -> u64 {
    bytes
        .and_then(|b| b.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A partition's column family: Bloom filters, so that the point reads every write makes of
/// keys that do not exist (a new id, a request id seen for the first time) skip the files
/// that cannot hold them. Smaller memtables (4 and 16 MiB instead of 64) took memtable search
/// from 11 % to 7 % of all CPU under writes, but did not raise write throughput beyond the
/// noise and cost LIST 5–8 % (more files for its iterator to merge): not taken
/// (BENCHMARKS.md, round 2 session 4).
fn partition_options(
    filter: impl FnMut(u32, &[u8], &[u8]) -> Decision + Send + 'static,
) -> Options {
    let mut opts = Options::default();
    opts.set_compaction_filter("ringstore-outcome-retention", filter);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

impl Storage {
    /// Opens (or creates) the database at `path` with a column family for each partition,
    /// keeping request outcomes as `retention` says. Counts each partition's records (a scan
    /// of its group index: some 0.3 s per million records here).
    pub fn open(
        path: &Path,
        partitions: &[PartitionId],
        retention: OutcomeRetention,
    ) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let applied: HashMap<_, _> = partitions
            .iter()
            .map(|&p| (p, Arc::new(AtomicU64::new(0))))
            .collect();
        let cfs = partitions.iter().map(|p| {
            let filter = outcome_filter(retention, applied[p].clone());
            ColumnFamilyDescriptor::new(partition_cf(*p), partition_options(filter))
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut storage = Self {
            db: Arc::new(db),
            slots: Arc::default(),
        };
        let mut slots = HashMap::new();
        for (p, applied) in applied {
            storage.forget_legacy_keys(p)?;
            applied.store(storage.applied(p)?, Ordering::Relaxed);
            let tally = Mutex::new(storage.count_records(p)?);
            slots.insert(p, Slot { tally, applied });
        }
        storage.slots = Arc::new(slots);
        Ok(storage)
    }

    /// Partition `p`'s records, counted from the group index.
    fn count_records(&self, p: PartitionId) -> Result<Tally, StorageError> {
        let cf = self.cf(p)?;
        let mut groups = HashMap::new();
        let index = self
            .db
            .iterator_cf(cf, IteratorMode::From(b"g", Direction::Forward));
        for item in index {
            let (key, _) = item?;
            let Some(rest) = key.strip_prefix(&b"g"[..]) else {
                break;
            };
            let group = rest.get(..4).and_then(|g| g.try_into().ok());
            let group = u32::from_be_bytes(group.ok_or(StorageError::BadKey)?);
            *groups.entry(group).or_insert(0) += 1;
        }
        Ok(Tally {
            total: groups.values().sum(),
            groups,
        })
    }

    /// Deletes the keys of an older layout (see the module documentation), if any.
    fn forget_legacy_keys(&self, p: PartitionId) -> Result<(), StorageError> {
        let cf = self.cf(p)?;
        let mut batch = WriteBatch::default();
        for (from, to) in LEGACY_RANGES {
            let mut keys = self
                .db
                .iterator_cf(cf, IteratorMode::From(from, Direction::Forward));
            if let Some(item) = keys.next() {
                if item?.0.as_ref() < to {
                    batch.delete_range_cf(cf, from, to);
                }
            }
        }
        if self.db.get_pinned_cf(cf, LEGACY_COUNT)?.is_some() {
            batch.delete_cf(cf, LEGACY_COUNT);
        }
        if !batch.is_empty() {
            self.db.write(batch)?;
        }
        Ok(())
    }

    fn cf(&self, p: PartitionId) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(&partition_cf(p))
            .ok_or(StorageError::NotHosted(p))
    }

    fn slot(&self, p: PartitionId) -> Result<&Slot, StorageError> {
        self.slots.get(&p).ok_or(StorageError::NotHosted(p))
    }

    fn lock_tally(&self, p: PartitionId) -> Result<std::sync::MutexGuard<'_, Tally>, StorageError> {
        Ok(self
            .slot(p)?
            .tally
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }

    fn read_u64(&self, p: PartitionId, key: &[u8]) -> Result<u64, StorageError> {
        Ok(be64(self.db.get_pinned_cf(self.cf(p)?, key)?))
    }

    /// The last log sequence applied to partition `p` (0 if none).
    pub fn applied(&self, p: PartitionId) -> Result<u64, StorageError> {
        self.read_u64(p, APPLIED)
    }

    /// The record `id` of partition `p`, with its version.
    pub fn get(&self, p: PartitionId, id: &str) -> Result<Option<VersionedUser>, StorageError> {
        match self.db.get_pinned_cf(self.cf(p)?, record_key(id))? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The latest state of record `id` as this copy knows it: the sequence of its latest log
    /// entry (a tombstone's for a deleted record, 0 for an id never written) and the record.
    pub fn state(&self, p: PartitionId, id: &str) -> Result<(u64, Option<User>), StorageError> {
        if let Some(found) = self.get(p, id)? {
            return Ok((found.version, Some(found.user)));
        }
        let tombstone = self.db.get_pinned_cf(self.cf(p)?, tombstone_key(id))?;
        Ok((be64(tombstone), None))
    }

    /// The epoch (identity) of the log partition `p` was applied from, if recorded.
    pub fn log_epoch(&self, p: PartitionId) -> Result<Option<u64>, StorageError> {
        let value = self.db.get_pinned_cf(self.cf(p)?, LOG_IDENTITY)?;
        Ok(value.map(|v| be64(Some(v))))
    }

    /// Records the epoch of the log partition `p` is applied from.
    pub fn set_log_epoch(&self, p: PartitionId, epoch: u64) -> Result<(), StorageError> {
        Ok(self
            .db
            .put_cf(self.cf(p)?, LOG_IDENTITY, epoch.to_be_bytes())?)
    }

    /// Forgets everything of partition `p` and starts it over, empty, as applied from the log
    /// of `epoch`: for a log that is not the one the copy was applied from.
    pub fn reset(&self, p: PartitionId, epoch: u64) -> Result<(), StorageError> {
        let cf = self.cf(p)?;
        let mut batch = WriteBatch::default();
        // Every key starts with an ASCII letter.
        batch.delete_range_cf(cf, [0u8].as_slice(), [0xffu8].as_slice());
        batch.put_cf(cf, LOG_IDENTITY, epoch.to_be_bytes());
        let mut tally = self.lock_tally(p)?;
        self.db.write(batch)?;
        *tally = Tally::default();
        self.slot(p)?.applied.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The outcome of an applied write, by request id.
    pub fn outcome(&self, p: PartitionId, request_id: &str) -> Result<Option<Reply>, StorageError> {
        match self
            .db
            .get_pinned_cf(self.cf(p)?, request_key(request_id))?
        {
            Some(bytes) => {
                let json = match outcome_stamp(&bytes) {
                    Some(_) => &bytes[OUTCOME_STAMP..],
                    None if bytes.first() == Some(&b'{') => &bytes[..],
                    None => return Err(StorageError::BadOutcome),
                };
                Ok(Some(serde_json::from_slice(json)?))
            }
            None => Ok(None),
        }
    }

    /// Number of records in partition `p`, in total or in one group, as of the last apply.
    pub fn count(&self, p: PartitionId, group: Option<u32>) -> Result<u64, StorageError> {
        let tally = self.lock_tally(p)?;
        Ok(match group {
            None => tally.total,
            Some(g) => tally.groups.get(&g).copied().unwrap_or(0),
        })
    }

    /// Up to `limit` records of partition `p` with ids bytewise after `after`, in id order,
    /// optionally only those of `group` (through the group index), and no more than about
    /// `max_bytes` of them (at least one: a page must fit in one NATS message); and whether
    /// more follow.
    /// Costs O(limit): one seek, then sequential reads, all from one snapshot so that the
    /// group index and the records it points at agree even while writes go on.
    pub fn scan(
        &self,
        p: PartitionId,
        after: Option<&str>,
        limit: usize,
        group: Option<u32>,
        max_bytes: usize,
    ) -> Result<(Vec<User>, bool), StorageError> {
        let cf = self.cf(p)?;
        let prefix = match group {
            Some(g) => group_key(g, ""),
            None => record_key(""),
        };
        let start = [&prefix[..], after.unwrap_or("").as_bytes()].concat();
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0;
        let snapshot = self.db.snapshot();
        for item in snapshot.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            let Some(id) = key.strip_prefix(&prefix[..]) else {
                break;
            };
            if after.is_some_and(|a| a.as_bytes() == id) {
                continue;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            let (record, size) = match group {
                None => (
                    serde_json::from_slice::<VersionedUser>(&value)?,
                    value.len(),
                ),
                Some(_) => match snapshot.get_pinned_cf(cf, record_key(id))? {
                    Some(found) => (
                        serde_json::from_slice::<VersionedUser>(&found)?,
                        found.len(),
                    ),
                    None => continue,
                },
            };
            bytes += size;
            if bytes > max_bytes && !items.is_empty() {
                return Ok((items, true));
            }
            items.push(record.user);
        }
        Ok((items, false))
    }

    /// Applies log entry `seq` to partition `p` in one batch ([`Storage::apply_all`] of one
    /// entry). Returns the outcome it recorded, or `None` when skipped as applied already.
    pub fn apply(
        &self,
        p: PartitionId,
        seq: u64,
        entry: &LogEntry,
    ) -> Result<Option<Reply>, StorageError> {
        let applied = self.apply_all(p, [(seq, Some(entry))])?;
        Ok((applied == Some(seq)).then(|| entry.outcome(seq)))
    }

    /// Applies the log entries `entries` (ascending sequences) to partition `p` in one
    /// `WriteBatch`, so a crash keeps all of them or none; a [`Step`] without an entry steps
    /// over its sequence (an entry that does not decode). Entries at or below the applied
    /// sequence are skipped, so re-applying is harmless. Returns the new applied sequence, or
    /// `None` when every entry was skipped. The caller serialises applies per partition.
    ///
    /// Only the keys an entry changes are written: an update that keeps its group touches
    /// neither the group index nor the counts (each key written is one more memtable insert,
    /// the largest cost of a write here). The record's stored group is read only when the
    /// step does not vouch for the entry's `group_before`.
    pub fn apply_all<'e, S: Into<Step<'e>>>(
        &self,
        p: PartitionId,
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Option<u64>, StorageError> {
        let cf = self.cf(p)?;
        let mut tally = self.lock_tally(p)?;
        let stored = &self.slot(p)?.applied;
        let mut applied = stored.load(Ordering::Relaxed);
        let mut batch = WriteBatch::default();
        // The group of each record as the batch leaves it (`None`: absent), so that a later
        // entry sees an earlier one.
        let mut records: HashMap<&str, Option<u32>> = HashMap::new();
        let mut total: i64 = 0;
        let mut groups: HashMap<u32, i64> = HashMap::new();
        let mut moved = false;
        for step in entries {
            let Step {
                seq,
                entry,
                prior_held,
            } = step.into();
            if seq <= applied {
                continue;
            }
            applied = seq;
            moved = true;
            let Some(entry) = entry else { continue };
            let old_group = match records.get(entry.id.as_str()) {
                Some(&group) => group,
                None if prior_held => entry.group_before,
                None => self.get(p, &entry.id)?.map(|v| v.user.group),
            };
            let new_group = entry.record.as_ref().map(|u| u.group);
            if old_group != new_group {
                if let Some(g) = old_group {
                    batch.delete_cf(cf, group_key(g, &entry.id));
                    *groups.entry(g).or_default() -= 1;
                }
                if let Some(g) = new_group {
                    batch.put_cf(cf, group_key(g, &entry.id), []);
                    *groups.entry(g).or_default() += 1;
                }
            }
            total += i64::from(new_group.is_some()) - i64::from(old_group.is_some());
            match &entry.record {
                Some(user) => {
                    let stored = VersionedUser {
                        user: user.clone(),
                        version: seq,
                    };
                    batch.put_cf(cf, record_key(&user.id), serde_json::to_vec(&stored)?);
                    // A record that existed has no tombstone.
                    if old_group.is_none() {
                        batch.delete_cf(cf, tombstone_key(&user.id));
                    }
                }
                None => {
                    if old_group.is_some() {
                        batch.delete_cf(cf, record_key(&entry.id));
                    }
                    batch.put_cf(cf, tombstone_key(&entry.id), seq.to_be_bytes());
                }
            }
            batch.put_cf(
                cf,
                request_key(&entry.request_id),
                outcome_value(seq, &entry.outcome(seq))?,
            );
            records.insert(&entry.id, new_group);
        }
        if !moved {
            return Ok(None);
        }
        batch.put_cf(cf, APPLIED, applied.to_be_bytes());
        self.db.write(batch)?;
        // Only once stored: a failed write leaves the counts as the records are.
        stored.store(applied, Ordering::Relaxed);
        tally.total = tally.total.saturating_add_signed(total);
        for (group, delta) in groups {
            let count = tally.groups.entry(group).or_insert(0);
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                tally.groups.remove(&group);
            }
        }
        Ok(Some(applied))
    }

    /// Compacts partition `p`'s request outcomes (memtable included), so that the outcome
    /// filter drops every one the retention no longer keeps. RocksDB's own compactions do the
    /// same as writes go on; this bounds how long an outcome outlives its retention when
    /// they do not reach it.
    pub fn compact_outcomes(&self, p: PartitionId) -> Result<(), StorageError> {
        self.db
            .compact_range_cf(self.cf(p)?, Some(&b"q"[..]), Some(&b"r"[..]));
        Ok(())
    }

    /// Flushes memtables to disk (on shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        Ok(self.db.flush()?)
    }
}
