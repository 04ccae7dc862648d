//! What applying the log costs a copy, without NATS: the tailer's `Storage::apply_all` on a
//! temp RocksDB, preloaded with `APPLY_USERS` records (default 10,000), then `APPLY_ENTRIES`
//! log entries (default 200,000) per scenario, applied in batches of the size the tailer sees
//! under light (1) and heavy (8) load, each update both as a copy with a gap applies it
//! (reading the record's stored group) and as one without ("prior known": the entry's
//! `group_before` stands in). Prints one table row per scenario: the median of five rounds'
//! microseconds per entry; then how long reopening the database takes (it counts the records
//! from the group index).
//!
//! `cargo bench -p dbnode --bench apply`; under `valgrind --tool=callgrind` (instructions, not
//! seconds) set `APPLY_ENTRIES=20000` and read the totals, one scenario at a time with
//! `APPLY_ONLY="<scenario>/<batch>"` (e.g. `APPLY_ONLY="create/1"`). Request ids are UUID v7,
//! as the gateway makes them; `APPLY_REQUEST_IDS=v4` makes them random (compare the two under
//! `valgrind --tool=cachegrind`: the data-cache misses of the outcome keys' inserts).

use std::time::Instant;

use dbnode::storage::{Step, Storage};
use protocol::{LogEntry, NodeId, User};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Request id number `request` of kind `ids` (`APPLY_REQUEST_IDS`): a UUID v7 (time-ordered)
/// as the gateway makes one, by default; `v4` a random UUID; `counter` a counter.
fn request_id(ids: &str, request: u64) -> String {
    match ids {
        "v4" => uuid::Uuid::new_v4().to_string(),
        "counter" => format!("req-{request:016x}"),
        _ => uuid::Uuid::now_v7().to_string(),
    }
}

fn entry(id: u64, group: Option<u32>, request_id: String) -> LogEntry {
    let id = format!("u{id}");
    LogEntry {
        record: group.map(|group| User {
            id: id.clone(),
            name: format!("name {id}"),
            email: format!("{id}@example.com"),
            group,
        }),
        id,
        writer: NodeId(0),
        request_id,
        group_before: None,
        seq_before: None,
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() {
    let users = env("APPLY_USERS", 10_000);
    let count = env("APPLY_ENTRIES", 200_000);
    let ids = std::env::var("APPLY_REQUEST_IDS").unwrap_or_default();
    let dir = tempfile::tempdir().expect("a temp dir");
    let storage = Storage::open(dir.path(), &[0], Default::default()).expect("storage");
    let mut seq = 0;
    let mut request = 0;
    // Each record's latest entry and group, which the writer puts in the next entry.
    let mut latest: std::collections::HashMap<u64, (u64, Option<u32>)> = Default::default();
    let mut next = |id, group| {
        seq += 1;
        request += 1;
        let mut entry = entry(id, group, request_id(&ids, request));
        let (before, group_before) = latest.insert(id, (seq, group)).unwrap_or((0, None));
        entry.seq_before = Some(before);
        entry.group_before = group_before;
        (seq, entry)
    };
    let preload: Vec<_> = (0..users).map(|id| next(id, Some(0))).collect();
    for chunk in preload.chunks(256) {
        let entries = chunk.iter().map(|(s, e)| (*s, Some(e)));
        storage.apply_all(0, entries).expect("preload");
    }
    let mut created = users;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!("| scenario | batch | entries | µs per entry (median of 5) |");
    println!("|---|---:|---:|---:|");
    // "prior known": the steps vouch for the entries' prior group, as the tailer's do when the
    // copy has no gap, so the record is not read.
    for (name, batch, prior_held) in [
        ("update, group changes", 1, false),
        ("update, group changes, prior known", 1, true),
        ("update, group changes", 8, false),
        ("update, group changes, prior known", 8, true),
        ("create", 1, false),
    ] {
        let label = format!("{name}/{batch}");
        if std::env::var("APPLY_ONLY").is_ok_and(|only| only != label) {
            continue;
        }
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let entries: Vec<_> = (0..count)
                .map(|_| match name {
                    "create" => {
                        created += 1;
                        next(created, Some(rng.below(16) as u32))
                    }
                    _ => next(rng.below(users), Some(rng.below(16) as u32)),
                })
                .collect();
            let started = Instant::now();
            for chunk in entries.chunks(batch) {
                let steps = chunk.iter().map(|(seq, entry)| Step {
                    seq: *seq,
                    entry: Some(entry),
                    prior_held,
                });
                storage.apply_all(0, steps).expect("apply");
            }
            rounds.push(started.elapsed().as_secs_f64() * 1e6 / count as f64);
        }
        rounds.sort_by(f64::total_cmp);
        println!("| {name} | {batch} | {count} | {:.2} |", rounds[2]);
    }
    let records = storage.count(0, None).expect("a count");
    // As a node leaves it on shutdown: nothing to replay from the write-ahead log.
    storage.flush().expect("a flush");
    drop(storage);
    let started = Instant::now();
    let storage = Storage::open(dir.path(), &[0], Default::default()).expect("reopen");
    let opened = started.elapsed();
    assert_eq!(storage.count(0, None).expect("a count"), records);
    println!(
        "\nreopened in {:.0} ms, counting {records} records from the group index",
        opened.as_secs_f64() * 1e3
    );
}
