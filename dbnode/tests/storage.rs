//! Storage suite on a temp dir: apply, idempotent re-apply, restart, and replay of a
//! compacted log (one entry per record, as JetStream keeps it) into an empty node.

use std::time::Duration;

use dbnode::storage::{OutcomeRetention, Storage};
use protocol::{LogEntry, NodeId, Reply, User, VersionedUser};

fn user(id: &str, group: u32) -> User {
    User {
        id: id.into(),
        name: format!("name {id}"),
        email: format!("{id}@example.com"),
        group,
    }
}

fn put(id: &str, group: u32, request: &str) -> LogEntry {
    LogEntry {
        id: id.into(),
        record: Some(user(id, group)),
        writer: NodeId(0),
        request_id: request.into(),
        group_before: None,
        seq_before: None,
    }
}

fn tombstone(id: &str, request: &str) -> LogEntry {
    LogEntry {
        id: id.into(),
        record: None,
        writer: NodeId(1),
        request_id: request.into(),
        group_before: None,
        seq_before: None,
    }
}

/// A history of partition 0: (sequence, entry).
fn history() -> Vec<(u64, LogEntry)> {
    vec![
        (1, put("a", 1, "r1")),
        (2, put("b", 1, "r2")),
        (3, put("c", 2, "r3")),
        (4, put("a", 2, "r4")), // a moves from group 1 to group 2
        (5, tombstone("b", "r5")),
        (6, put("d.x ü", 1, "r6")),
    ]
}

fn open(dir: &std::path::Path) -> Storage {
    Storage::open(dir, &[0, 2], Default::default()).unwrap()
}

fn assert_final_state(storage: &Storage) {
    assert_eq!(storage.applied(0).unwrap(), 6);
    assert_eq!(storage.get(0, "a").unwrap().unwrap().user.group, 2);
    assert_eq!(storage.get(0, "a").unwrap().unwrap().version, 4);
    assert_eq!(storage.get(0, "b").unwrap(), None);
    assert_eq!(
        storage.get(0, "d.x ü").unwrap().unwrap().user,
        user("d.x ü", 1)
    );
    assert_eq!(storage.count(0, None).unwrap(), 3);
    assert_eq!(storage.count(0, Some(1)).unwrap(), 1);
    assert_eq!(storage.count(0, Some(2)).unwrap(), 2);
    assert_eq!(storage.count(0, Some(3)).unwrap(), 0);
}

#[test]
fn apply_keeps_record_counts_and_applied_sequence_together() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        assert!(storage.apply(0, seq, &entry).unwrap().is_some());
    }
    assert_final_state(&storage);
    // The other partition is untouched.
    assert_eq!(storage.applied(2).unwrap(), 0);
    assert_eq!(storage.get(2, "a").unwrap(), None);
}

#[test]
fn reapplying_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    for (seq, entry) in history() {
        assert_eq!(
            storage.apply(0, seq, &entry).unwrap(),
            None,
            "seq {seq} applied twice"
        );
    }
    assert_final_state(&storage);
}

#[test]
fn outcomes_are_kept_per_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    match storage.outcome(0, "r4").unwrap() {
        Some(Reply::User(v)) => assert_eq!((v.version, v.user.group), (4, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        storage.outcome(0, "r5").unwrap(),
        Some(Reply::Deleted { version: 5 })
    );
    assert_eq!(storage.outcome(0, "never").unwrap(), None);
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        for (seq, entry) in history() {
            storage.apply(0, seq, &entry).unwrap();
        }
        storage.flush().unwrap();
    }
    assert_final_state(&open(dir.path()));
}

/// The counters an apply adds to are the ones stored: a copy started over from a recreated
/// log counts from zero, and a reopened store counts on from what it had.
#[test]
fn counts_start_over_with_a_reset_and_go_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        for (seq, entry) in history() {
            storage.apply(0, seq, &entry).unwrap();
        }
        storage.reset(0, 7).unwrap();
        assert_eq!(storage.count(0, None).unwrap(), 0);
        for (seq, entry) in history() {
            storage.apply(0, seq, &entry).unwrap();
        }
        assert_final_state(&storage);
        storage.flush().unwrap();
    }
    let storage = open(dir.path());
    storage.apply(0, 7, &put("e", 3, "r7")).unwrap();
    storage.apply(0, 8, &tombstone("a", "r8")).unwrap();
    assert_eq!(storage.applied(0).unwrap(), 8);
    assert_eq!(storage.count(0, None).unwrap(), 3);
    assert_eq!(storage.count(0, Some(1)).unwrap(), 1);
    assert_eq!(storage.count(0, Some(2)).unwrap(), 1);
    assert_eq!(storage.count(0, Some(3)).unwrap(), 1);
}

#[test]
fn replaying_the_compacted_log_rebuilds_the_same_state() {
    // JetStream keeps one message per record subject: superseded sequences are gone.
    let mut compacted = history();
    compacted.retain(|(seq, _)| ![1, 2].contains(seq));
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in compacted {
        storage.apply(0, seq, &entry).unwrap();
    }
    assert_final_state(&storage);
}

#[test]
fn a_resumed_replay_skips_what_was_applied() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let history = history();
    for (seq, entry) in &history[..3] {
        storage.apply(0, *seq, entry).unwrap();
    }
    // A tailer restarted from the beginning delivers everything again.
    for (seq, entry) in &history {
        storage.apply(0, *seq, entry).unwrap();
    }
    assert_final_state(&storage);
}

#[test]
fn scan_pages_by_id_and_by_group_index() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    let ids = |(items, more): (Vec<User>, bool)| {
        (items.into_iter().map(|u| u.id).collect::<Vec<_>>(), more)
    };
    assert_eq!(
        ids(storage.scan(0, None, 2, None, usize::MAX).unwrap()),
        (vec!["a".into(), "c".into()], true)
    );
    assert_eq!(
        ids(storage.scan(0, Some("c"), 2, None, usize::MAX).unwrap()),
        (vec!["d.x ü".into()], false)
    );
    assert_eq!(
        ids(storage.scan(0, Some("b"), 10, None, usize::MAX).unwrap()).0,
        ["c", "d.x ü"]
    );
    assert_eq!(
        ids(storage.scan(0, None, 10, Some(2), usize::MAX).unwrap()),
        (vec!["a".into(), "c".into()], false)
    );
    assert_eq!(
        ids(storage.scan(0, Some("a"), 10, Some(2), usize::MAX).unwrap()).0,
        ["c"]
    );
    assert_eq!(
        ids(storage.scan(0, None, 10, Some(1), usize::MAX).unwrap()).0,
        ["d.x ü"]
    );
    assert_eq!(
        ids(storage.scan(0, None, 10, Some(7), usize::MAX).unwrap()),
        (vec![], false)
    );
}

#[test]
fn outcomes_beyond_the_kept_writes_are_dropped_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let retention = OutcomeRetention {
        age: Duration::from_secs(86_400),
        writes: 2,
    };
    let storage = Storage::open(dir.path(), &[0, 2], retention).unwrap();
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    storage.compact_outcomes(0).unwrap();
    // Sequences 5 and 6 are the last two: their outcomes stay, 1..=4 go.
    for gone in ["r1", "r2", "r3", "r4"] {
        assert_eq!(storage.outcome(0, gone).unwrap(), None, "{gone}");
    }
    assert_eq!(
        storage.outcome(0, "r5").unwrap(),
        Some(Reply::Deleted { version: 5 })
    );
    assert!(storage.outcome(0, "r6").unwrap().is_some());
    // Records, counts and the applied sequence are untouched.
    assert_final_state(&storage);
}

#[test]
fn a_page_stops_at_its_byte_budget_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    // Each stored record is some 80 bytes of JSON: a 100-byte budget holds one.
    let (items, more) = storage.scan(0, None, 10, None, 100).unwrap();
    assert_eq!((items.len(), more), (1, true));
    let (items, more) = storage.scan(0, None, 10, None, 1).unwrap();
    assert_eq!((items.len(), more), (1, true), "at least one record");
    let (items, more) = storage.scan(0, None, 10, Some(2), 100).unwrap();
    assert_eq!((items.len(), more), (1, true), "by group too");
}

#[test]
fn outcomes_older_than_the_retention_are_dropped_whatever_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let young = OutcomeRetention {
        age: Duration::from_secs(3600),
        writes: 100,
    };
    let storage = Storage::open(dir.path(), &[0, 2], young).unwrap();
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    let applied_at = protocol::timing::now_ms();
    storage.compact_outcomes(0).unwrap();
    assert!(
        storage.outcome(0, "r1").unwrap().is_some(),
        "younger than an hour"
    );
    drop(storage);
    // Reopened with no retention by age: every outcome applied before now goes.
    let none = OutcomeRetention {
        age: Duration::ZERO,
        writes: 100,
    };
    let storage = Storage::open(dir.path(), &[0, 2], none).unwrap();
    while protocol::timing::now_ms() <= applied_at {
        std::thread::yield_now();
    }
    storage.compact_outcomes(0).unwrap();
    for (_, entry) in history() {
        assert_eq!(storage.outcome(0, &entry.request_id).unwrap(), None);
    }
    assert_final_state(&storage);
}

/// A database of the earlier layout: stored counters (`c{group}`, `m/count`), an outcome order
/// index (`o{seq}`) and outcomes as plain JSON.
#[test]
fn a_database_of_the_earlier_layout_is_counted_from_its_index_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["p0", "p2"]).unwrap();
        let cf = db.cf_handle("p0").unwrap();
        let record = VersionedUser {
            user: user("a", 7),
            version: 1,
        };
        db.put_cf(cf, b"ra", serde_json::to_vec(&record).unwrap())
            .unwrap();
        db.put_cf(cf, [&b"g"[..], &7u32.to_be_bytes(), b"a"].concat(), [])
            .unwrap();
        // Counters that disagree with the index: the index wins.
        db.put_cf(
            cf,
            [&b"c"[..], &7u32.to_be_bytes()].concat(),
            99u64.to_be_bytes(),
        )
        .unwrap();
        db.put_cf(cf, b"m/count", 99u64.to_be_bytes()).unwrap();
        let reply = serde_json::to_vec(&Reply::written(Some(user("a", 7)), 1)).unwrap();
        db.put_cf(cf, b"qr1", reply).unwrap();
        db.put_cf(cf, [&b"o"[..], &1u64.to_be_bytes()].concat(), b"whenr1")
            .unwrap();
        db.put_cf(cf, b"m/applied", 1u64.to_be_bytes()).unwrap();
    }
    let storage = open(dir.path());
    assert_eq!(storage.count(0, None).unwrap(), 1);
    assert_eq!(storage.count(0, Some(7)).unwrap(), 1);
    assert_eq!(storage.applied(0).unwrap(), 1);
    assert_eq!(
        storage.outcome(0, "r1").unwrap(),
        Some(Reply::written(Some(user("a", 7)), 1)),
        "an unstamped outcome still answers until compacted"
    );
    storage.compact_outcomes(0).unwrap();
    assert_eq!(
        storage.outcome(0, "r1").unwrap(),
        None,
        "its age is unknown"
    );
    drop(storage);
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), ["p0", "p2"]).unwrap();
    let cf = db.cf_handle("p0").unwrap();
    let keys: Vec<Vec<u8>> = db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap().0.to_vec())
        .collect();
    let expected: Vec<Vec<u8>> = vec![
        [&b"g"[..], &7u32.to_be_bytes(), b"a"].concat(),
        b"m/applied".to_vec(),
        b"ra".to_vec(),
    ];
    assert_eq!(keys, expected, "no counter or order key is left");
}

#[test]
fn a_deleted_record_keeps_the_sequence_of_its_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    assert_eq!(storage.state(0, "a").unwrap(), (0, None), "never written");
    storage.apply(0, 1, &put("a", 1, "r1")).unwrap();
    assert_eq!(storage.state(0, "a").unwrap().0, 1);
    storage.apply(0, 2, &tombstone("a", "r2")).unwrap();
    assert_eq!(
        storage.state(0, "a").unwrap(),
        (2, None),
        "the tombstone's sequence"
    );
    storage.apply(0, 3, &put("a", 4, "r3")).unwrap();
    let (seq, record) = storage.state(0, "a").unwrap();
    assert_eq!((seq, record.map(|u| u.group)), (3, Some(4)));
}

#[test]
fn a_reset_forgets_the_partition_and_records_the_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for (seq, entry) in history() {
        storage.apply(0, seq, &entry).unwrap();
    }
    storage.set_log_epoch(0, 7).unwrap();
    storage.reset(0, 8).unwrap();
    assert_eq!(storage.applied(0).unwrap(), 0);
    assert_eq!(storage.count(0, None).unwrap(), 0);
    assert_eq!(
        storage.scan(0, None, 10, None, usize::MAX).unwrap(),
        (vec![], false)
    );
    assert_eq!(storage.outcome(0, "r1").unwrap(), None);
    assert_eq!(storage.log_epoch(0).unwrap(), Some(8));
    // It applies from the new log's first entry on.
    assert!(storage.apply(0, 1, &put("a", 1, "n1")).unwrap().is_some());
}

#[test]
fn skipping_an_undecodable_entry_moves_only_the_applied_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let history = history();
    for (seq, entry) in &history[..5] {
        storage.apply(0, *seq, entry).unwrap();
    }
    assert_eq!(
        storage.apply_all(0, [(5, None)]).unwrap(),
        None,
        "already applied"
    );
    assert_eq!(storage.apply_all(0, [(6, None)]).unwrap(), Some(6));
    assert_eq!(storage.applied(0).unwrap(), 6);
    assert_eq!(
        storage.get(0, "d.x ü").unwrap(),
        None,
        "the skipped entry changed nothing"
    );
    assert_eq!(storage.count(0, None).unwrap(), 2);
    // The next entry applies as usual.
    storage.apply(0, 7, &put("e", 1, "r7")).unwrap();
    assert_eq!(storage.applied(0).unwrap(), 7);
}

/// What the tailer does with a burst of entries: one batch, the same state as one by one,
/// including a record written twice, moved between groups and deleted within the batch.
#[test]
fn a_batch_of_entries_leaves_the_state_entry_by_entry_application_does() {
    let mut history = history();
    history.extend([
        (7, put("c", 3, "r7")), // c moves 2 → 3
        (8, tombstone("c", "r8")),
        (9, put("c", 1, "r9")), // re-created after its delete, in the same batch
        (10, put("e", 4, "r10")),
        (11, put("e", 4, "r11")), // an update that keeps its group
    ]);
    let (one, all) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, all) = (open(one.path()), open(all.path()));
    for (seq, entry) in &history {
        one.apply(0, *seq, entry).unwrap();
    }
    // Two batches, the second overlapping the first (a re-delivery) and with a hole.
    let entries = |range: std::ops::Range<usize>| {
        history[range]
            .iter()
            .map(|(seq, entry)| (*seq, Some(entry)))
            .collect::<Vec<_>>()
    };
    assert_eq!(all.apply_all(0, entries(0..4)).unwrap(), Some(4));
    assert_eq!(all.apply_all(0, entries(2..11)).unwrap(), Some(11));
    for storage in [&one, &all] {
        assert_eq!(storage.applied(0).unwrap(), 11);
        assert_eq!(storage.count(0, None).unwrap(), 4, "a, c, d, e");
        for (group, count) in [(1, 2), (2, 1), (3, 0), (4, 1)] {
            assert_eq!(
                storage.count(0, Some(group)).unwrap(),
                count,
                "group {group}"
            );
        }
        assert_eq!(storage.state(0, "c").unwrap().0, 9);
        assert_eq!(storage.state(0, "b").unwrap(), (5, None), "b's tombstone");
        let in_group = |g| {
            let (users, _) = storage.scan(0, None, 100, Some(g), usize::MAX).unwrap();
            users.into_iter().map(|u| u.id).collect::<Vec<_>>()
        };
        assert_eq!(in_group(1), ["c", "d.x ü"]);
        assert_eq!(in_group(2), ["a"]);
        assert!(in_group(3).is_empty());
        assert_eq!(in_group(4), ["e"]);
        assert_eq!(
            storage.outcome(0, "r8").unwrap(),
            Some(Reply::written(None, 8))
        );
    }
}

/// The tailer's shortcut: when the copy is the log's prefix up to an entry's `seq_before`, the
/// entry's `group_before` stands in for reading the stored record. Applied so, a history the
/// writer wrote (each entry naming the record's previous entry and group) leaves exactly the
/// state, counts and group index that reading each record leaves.
#[test]
fn trusting_an_entrys_prior_group_leaves_the_state_reading_it_does() {
    // As the writer appends them: each entry knows its record's previous entry and group.
    let mut latest: std::collections::HashMap<String, (u64, Option<u32>)> = Default::default();
    let mut history = history();
    history.extend([
        (7, put("c", 3, "r7")),
        (8, tombstone("c", "r8")),
        (9, put("c", 1, "r9")),
        (10, put("b", 4, "r10")), // re-created after its delete
        (11, put("a", 2, "r11")), // keeps its group
    ]);
    for (seq, entry) in &mut history {
        let (before, group) = latest.get(&entry.id).copied().unwrap_or((0, None));
        entry.seq_before = Some(before);
        entry.group_before = group;
        latest.insert(
            entry.id.clone(),
            (*seq, entry.record.as_ref().map(|u| u.group)),
        );
    }
    let (read_dir, trusted_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (read, trusted) = (open(read_dir.path()), open(trusted_dir.path()));
    for (seq, entry) in &history {
        read.apply(0, *seq, entry).unwrap();
    }
    for chunk in history.chunks(3) {
        let steps = chunk.iter().map(|(seq, entry)| dbnode::storage::Step {
            seq: *seq,
            entry: Some(entry),
            prior_held: true,
        });
        trusted.apply_all(0, steps).unwrap();
    }
    // Counted as applied, and again from the group index after a restart.
    drop(trusted);
    let reopened = open(trusted_dir.path());
    for storage in [&read, &reopened] {
        assert_eq!(storage.count(0, None).unwrap(), 4, "a, b, c, d");
        for (group, count) in [(1, 2), (2, 1), (3, 0), (4, 1)] {
            assert_eq!(
                storage.count(0, Some(group)).unwrap(),
                count,
                "group {group}"
            );
            let (users, _) = storage.scan(0, None, 100, Some(group), usize::MAX).unwrap();
            assert_eq!(users.len() as u64, count, "group {group}'s index");
        }
    }
    // The shortcut is taken: a step that vouches for a wrong prior group is believed (the
    // tailer vouches only for what the log guarantees).
    let mut wrong = put("d.x ü", 1, "r12");
    wrong.group_before = Some(4);
    let step = dbnode::storage::Step {
        seq: 12,
        entry: Some(&wrong),
        prior_held: true,
    };
    reopened.apply_all(0, [step]).unwrap();
    assert_eq!(reopened.count(0, Some(4)).unwrap(), 0, "not read: believed");
}
