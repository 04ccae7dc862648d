//! RocksDB storage: one column family per hosted partition, named [`partition_cf`].
//!
//! Keys inside a partition's column family:
//! - `r{id}` → the record and its version (JSON [`VersionedUser`]);
//! - `g{group:be32}{id}` → empty: the group index;
//! - `t{id}` → the sequence (be64) of the tombstone of a deleted record: with the record keys,
//!   every id's latest log sequence, which the writer's conditional appends name;
//! - `q{request_id}` → the write's outcome (JSON [`Reply`]), for idempotent retries, and
//!   `o{seq:be64}` → when it was applied (Unix ms, be64) and its request id, so that old
//!   outcomes can be pruned in log order;
//! - `m/applied` → the last applied log sequence (be64); `m/log` → the identity of the log it
//!   was applied from (the stream's creation time, be64), so that a recreated log is noticed;
//! - `m/count` and `c{group:be32}` → record counts, total and per group (be64).
//!
//! Log entries are applied in `WriteBatch`es holding all of these, so a crash never
//! leaves a record without its index, counts or applied sequence. The counters and the applied
//! sequence are also kept in memory (read once per partition), so that an apply writes them
//! without reading them back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::{LogEntry, PartitionId, Reply, User, VersionedUser};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

const APPLIED: &[u8] = b"m/applied";
const COUNT: &[u8] = b"m/count";
const LOG_IDENTITY: &[u8] = b"m/log";

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
    /// A group counter's key is not `c` and four bytes.
    #[error("a group counter key of unexpected length")]
    BadKey,
}

/// The node's database, shared by every task.
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
    /// Per hosted partition, its counters as the last apply left them (read at open), so that
    /// an apply need not read them back from RocksDB.
    tallies: Arc<HashMap<PartitionId, Mutex<Tally>>>,
}

/// A partition's applied sequence and record counts, as stored. Only `apply_all` and `reset`
/// write them (one tailer per partition), so the copy kept here stays equal to RocksDB's.
#[derive(Debug, Default)]
struct Tally {
    applied: u64,
    total: u64,
    groups: HashMap<u32, u64>,
}

fn record_key(id: impl AsRef<[u8]>) -> Vec<u8> {
    [b"r", id.as_ref()].concat()
}

fn group_key(group: u32, id: &str) -> Vec<u8> {
    [&b"g"[..], &group.to_be_bytes(), id.as_bytes()].concat()
}

fn group_count_key(group: u32) -> Vec<u8> {
    [&b"c"[..], &group.to_be_bytes()].concat()
}

fn tombstone_key(id: &str) -> Vec<u8> {
    [b"t", id.as_bytes()].concat()
}

fn request_key(request_id: &str) -> Vec<u8> {
    [b"q", request_id.as_bytes()].concat()
}

/// `o{seq:be64}` → request id: the outcomes in log order, so that old ones can be pruned.
fn outcome_order_key(seq: u64) -> Vec<u8> {
    [&b"o"[..], &seq.to_be_bytes()].concat()
}

/// `{applied at, Unix ms:be64}{request id}`.
fn outcome_order_value(request_id: &str) -> Vec<u8> {
    [
        &protocol::timing::now_ms().to_be_bytes()[..],
        request_id.as_bytes(),
    ]
    .concat()
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
fn partition_options() -> Options {
    let mut opts = Options::default();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

impl Storage {
    /// Opens (or creates) the database at `path` with a column family for each partition.
    pub fn open(path: &Path, partitions: &[PartitionId]) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = partitions
            .iter()
            .map(|&p| ColumnFamilyDescriptor::new(partition_cf(p), partition_options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut storage = Self {
            db: Arc::new(db),
            tallies: Arc::default(),
        };
        let tallies = partitions
            .iter()
            .map(|&p| Ok((p, Mutex::new(storage.load_tally(p)?))))
            .collect::<Result<_, StorageError>>()?;
        storage.tallies = Arc::new(tallies);
        Ok(storage)
    }

    /// Partition `p`'s counters, read from RocksDB.
    fn load_tally(&self, p: PartitionId) -> Result<Tally, StorageError> {
        let cf = self.cf(p)?;
        let mut groups = HashMap::new();
        let start = group_count_key(0);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            let Some(group) = key.strip_prefix(&b"c"[..]) else {
                break;
            };
            let group = u32::from_be_bytes(group.try_into().map_err(|_| StorageError::BadKey)?);
            groups.insert(group, be64(Some(value)));
        }
        Ok(Tally {
            applied: self.applied(p)?,
            total: self.read_u64(p, COUNT)?,
            groups,
        })
    }

    fn cf(&self, p: PartitionId) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(&partition_cf(p))
            .ok_or(StorageError::NotHosted(p))
    }

    fn lock_tally(&self, p: PartitionId) -> Result<std::sync::MutexGuard<'_, Tally>, StorageError> {
        let slot = self.tallies.get(&p).ok_or(StorageError::NotHosted(p))?;
        Ok(slot.lock().unwrap_or_else(|e| e.into_inner()))
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
        Ok(())
    }

    /// The outcome of an applied write, by request id.
    pub fn outcome(&self, p: PartitionId, request_id: &str) -> Result<Option<Reply>, StorageError> {
        match self
            .db
            .get_pinned_cf(self.cf(p)?, request_key(request_id))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Number of records in partition `p`, in total or in one group.
    pub fn count(&self, p: PartitionId, group: Option<u32>) -> Result<u64, StorageError> {
        match group {
            None => self.read_u64(p, COUNT),
            Some(g) => self.read_u64(p, &group_count_key(g)),
        }
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
    /// `WriteBatch`, so a crash keeps all of them or none; `None` in place of an entry steps
    /// over its sequence (an entry that does not decode). Entries at or below the applied
    /// sequence are skipped, so re-applying is harmless. Returns the new applied sequence, or
    /// `None` when every entry was skipped. The caller serialises applies per partition.
    ///
    /// Only the keys an entry changes are written: an update that keeps its group touches
    /// neither the group index nor the counts (each key written is one more memtable insert,
    /// the largest cost of a write here).
    pub fn apply_all<'e>(
        &self,
        p: PartitionId,
        entries: impl IntoIterator<Item = (u64, Option<&'e LogEntry>)>,
    ) -> Result<Option<u64>, StorageError> {
        let cf = self.cf(p)?;
        let mut tally = self.lock_tally(p)?;
        let mut applied = tally.applied;
        let mut batch = WriteBatch::default();
        // The group of each record as the batch leaves it (`None`: absent), so that a later
        // entry sees an earlier one.
        let mut records: HashMap<&str, Option<u32>> = HashMap::new();
        let mut total: i64 = 0;
        let mut groups: HashMap<u32, i64> = HashMap::new();
        let mut moved = false;
        for (seq, entry) in entries {
            if seq <= applied {
                continue;
            }
            applied = seq;
            moved = true;
            let Some(entry) = entry else { continue };
            let old_group = match records.get(entry.id.as_str()) {
                Some(&group) => group,
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
                serde_json::to_vec(&entry.outcome(seq))?,
            );
            batch.put_cf(
                cf,
                outcome_order_key(seq),
                outcome_order_value(&entry.request_id),
            );
            records.insert(&entry.id, new_group);
        }
        if !moved {
            return Ok(None);
        }
        let mut counts = Vec::with_capacity(groups.len());
        for (group, delta) in groups.into_iter().filter(|(_, d)| *d != 0) {
            let key = group_count_key(group);
            let before = tally.groups.get(&group).copied().unwrap_or(0);
            let count = before.saturating_add_signed(delta);
            match count {
                0 => batch.delete_cf(cf, key),
                n => batch.put_cf(cf, key, n.to_be_bytes()),
            }
            counts.push((group, count));
        }
        let count = tally.total.saturating_add_signed(total);
        if total != 0 {
            batch.put_cf(cf, COUNT, count.to_be_bytes());
        }
        batch.put_cf(cf, APPLIED, applied.to_be_bytes());
        self.db.write(batch)?;
        // Only once stored: a failed write leaves the counters as RocksDB has them.
        tally.applied = applied;
        tally.total = count;
        for (group, count) in counts {
            match count {
                0 => tally.groups.remove(&group),
                n => tally.groups.insert(group, n),
            };
        }
        Ok(Some(applied))
    }

    /// Forgets the outcomes of writes applied before `older_than` (Unix ms) or more than `keep`
    /// sequences behind the applied one, at most `budget` of them per call, oldest first;
    /// returns how many it forgot. Retries that old are then recognised only within
    /// JetStream's duplicate window.
    pub fn prune_outcomes(
        &self,
        p: PartitionId,
        older_than: u64,
        keep: u64,
        budget: usize,
    ) -> Result<usize, StorageError> {
        let cf = self.cf(p)?;
        let cutoff = self.applied(p)?.saturating_sub(keep);
        let mut batch = WriteBatch::default();
        let mut pruned = 0;
        let start = outcome_order_key(0);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            let Some(seq) = key.strip_prefix(&b"o"[..]) else {
                break;
            };
            let (at, request_id) = value.split_at(8.min(value.len()));
            if pruned == budget || (be64(Some(seq)) > cutoff && be64(Some(at)) >= older_than) {
                break;
            }
            batch.delete_cf(cf, &key);
            batch.delete_cf(cf, [&b"q"[..], request_id].concat());
            pruned += 1;
        }
        self.db.write(batch)?;
        Ok(pruned)
    }

    /// Flushes memtables to disk (on shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        Ok(self.db.flush()?)
    }
}
