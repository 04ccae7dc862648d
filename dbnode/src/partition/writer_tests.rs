//! The writer's interleavings against an in-memory log with JetStream's rules (one entry per
//! record subject, the expected-subject-sequence check before the duplicate window): stale
//! local state, another writer's entries, retries of committed requests, deadlines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use protocol::{LogEntry, NodeId, ProtocolError, Reply, User, UserPatch, WriteKind, WriteRequest};
use tokio::sync::watch;

use super::Writer;
use crate::log::{AppendError, Appended, Latest, Log, LogError};
use crate::storage::Storage;

/// A partition log in memory, as JetStream keeps `RINGSTORE_P{p}`.
#[derive(Default)]
struct MemoryLog {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    last: u64,
    /// Each record's latest entry.
    latest: HashMap<String, (u64, LogEntry)>,
    /// Request id → sequence (the duplicate window).
    seen: HashMap<String, u64>,
    conflicts: usize,
    /// Answers `latest` gives once before the true one: a deposed leader's stale copy.
    stale: HashMap<String, Latest>,
}

impl MemoryLog {
    /// Appends unconditionally, as another writer (or the past) did.
    fn put(&self, entry: LogEntry) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.last += 1;
        let seq = s.last;
        s.seen.insert(entry.request_id.clone(), seq);
        s.latest.insert(entry.id.clone(), (seq, entry));
        seq
    }

    fn last(&self) -> u64 {
        self.state.lock().unwrap().last
    }

    fn conflicts(&self) -> usize {
        self.state.lock().unwrap().conflicts
    }
}

impl Log for MemoryLog {
    fn append(
        &self,
        entry: &LogEntry,
        expected: u64,
    ) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let result = {
            let mut s = self.state.lock().unwrap();
            let current = s.latest.get(&entry.id).map_or(0, |(seq, _)| *seq);
            if current != expected {
                s.conflicts += 1;
                Err(AppendError::Conflict)
            } else if let Some(&seq) = s.seen.get(&entry.request_id) {
                Ok(Appended::Duplicate(seq))
            } else {
                drop(s);
                Ok(Appended::Stored(self.put(entry.clone())))
            }
        };
        Box::pin(async move {
            tokio::task::yield_now().await;
            result
        })
    }

    fn latest(&self, id: &str) -> BoxFuture<'static, Result<Latest, LogError>> {
        let mut s = self.state.lock().unwrap();
        let found = match s.stale.remove(id) {
            Some(stale) => stale,
            None => s.latest.get(id).cloned(),
        };
        Box::pin(async move { Ok(found) })
    }

    fn find_request(&self, entry: &LogEntry) -> BoxFuture<'static, Result<Option<u64>, LogError>> {
        let found = self
            .state
            .lock()
            .unwrap()
            .seen
            .get(&entry.request_id)
            .copied();
        Box::pin(async move { Ok(found) })
    }

    /// A marker takes a sequence, as on JetStream.
    fn verify(&self, id: &str, expected: u64) -> BoxFuture<'static, Result<bool, LogError>> {
        let mut s = self.state.lock().unwrap();
        let current = s.latest.get(id).map_or(0, |(seq, _)| *seq);
        let holds = current == expected;
        if holds {
            s.last += 1;
        } else {
            s.conflicts += 1;
        }
        Box::pin(async move { Ok(holds) })
    }
}

fn user(id: &str, name: &str) -> User {
    User {
        id: id.into(),
        name: name.into(),
        email: "a@example.com".into(),
        group: 1,
    }
}

fn entry(id: &str, name: Option<&str>, request_id: &str) -> LogEntry {
    LogEntry {
        id: id.into(),
        record: name.map(|n| user(id, n)),
        writer: NodeId(2),
        request_id: request_id.into(),
        group_before: None,
        seq_before: None,
    }
}

fn request(request_id: &str, kind: WriteKind) -> WriteRequest {
    WriteRequest {
        request_id: request_id.into(),
        deadline: protocol::timing::deadline_in(std::time::Duration::from_secs(10)),
        kind,
    }
}

fn rename(id: &str, name: &str, if_match: Option<u64>) -> WriteKind {
    WriteKind::Update {
        id: id.into(),
        patch: UserPatch {
            name: Some(name.into()),
            ..Default::default()
        },
        if_match: if_match.map(|v| vec![v]),
    }
}

/// A writer over `log` and a storage that has applied `applied` (entries, in order).
struct Setup {
    writer: Writer,
    log: Arc<MemoryLog>,
    _dir: tempfile::TempDir,
    _applied: watch::Sender<u64>,
}

fn setup(log: MemoryLog, applied: &[(u64, LogEntry)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), &[0], Default::default()).unwrap();
    for (seq, e) in applied {
        storage.apply(0, *seq, e).unwrap();
    }
    let log = Arc::new(log);
    let (applied, rx) = watch::channel(storage.applied(0).unwrap());
    // The tailer's end of the shortcut is not there: committed entries are dropped.
    let (committed, _) = tokio::sync::mpsc::channel(1);
    let writer = Writer::spawn(0, NodeId(1), storage, log.clone(), rx, committed);
    Setup {
        writer,
        log,
        _dir: dir,
        _applied: applied,
    }
}

fn name_of(reply: &Reply) -> (&str, u64) {
    match reply {
        Reply::User(v) => (&v.user.name, v.version),
        other => panic!("not a user: {other:?}"),
    }
}

#[tokio::test]
async fn a_decision_on_a_stale_copy_never_commits_it_is_made_again_on_the_log() {
    // This copy applied "old" at 1; another writer has since written "new" at 2.
    let log = MemoryLog::default();
    let old = entry("a", Some("old"), "r1");
    log.put(old.clone());
    log.put(entry("a", Some("new"), "r2"));
    let s = setup(log, &[(1, old)]);

    let stale = s
        .writer
        .write(request("w1", rename("a", "x", Some(1))))
        .await;
    assert_eq!(
        stale.answer,
        Err(ProtocolError::PreconditionFailed { current: 2 }),
        "refused against the log's version, not the copy's"
    );
    assert_eq!(stale.seen, 2);
    assert_eq!(s.log.last(), 3, "only the check marker appended");

    let blind = s.writer.write(request("w2", rename("a", "y", None))).await;
    assert_eq!(name_of(blind.answer.as_ref().unwrap()), ("y", 4));
}

#[tokio::test]
async fn a_refusal_is_given_only_on_the_records_latest_entry() {
    // The copy has never seen "a"; the log has it.
    let log = MemoryLog::default();
    log.put(entry("a", Some("there"), "r1"));
    let s = setup(log, &[]);

    let create = WriteKind::Create {
        user: user("a", "again"),
    };
    let refused = s.writer.write(request("w1", create)).await;
    assert_eq!(refused.answer, Err(ProtocolError::AlreadyExists));
    assert_eq!(
        refused.seen, 1,
        "the version the refusal was verified against"
    );

    let update = s.writer.write(request("w2", rename("a", "z", None))).await;
    assert_eq!(
        name_of(update.answer.as_ref().unwrap()),
        ("z", 3),
        "not a 404 (the refusal's check marker took 2)"
    );
}

#[tokio::test]
async fn a_refusal_is_not_given_on_a_stale_read_of_the_log() {
    // A log leader that was paused and replaced answers, until it learns so, from its old copy:
    // here, that "a" does not exist, as this copy believes too. The log has it.
    let log = MemoryLog::default();
    log.put(entry("a", Some("there"), "r1"));
    log.state.lock().unwrap().stale.insert("a".into(), None);
    let s = setup(log, &[]);

    let update = s.writer.write(request("w1", rename("a", "z", None))).await;
    assert_eq!(
        name_of(update.answer.as_ref().unwrap()),
        ("z", 2),
        "a 404 here would deny a record the log holds"
    );
}

#[tokio::test]
async fn a_retry_of_a_committed_request_returns_its_outcome_and_appends_nothing() {
    // Another copy committed w1 at 2; this copy only knows the record at 1.
    let log = MemoryLog::default();
    let first = entry("a", Some("v1"), "r1");
    log.put(first.clone());
    log.put(entry("a", Some("mine"), "w1"));
    let s = setup(log, &[(1, first)]);

    let retry = s
        .writer
        .write(request("w1", rename("a", "mine", None)))
        .await;
    assert_eq!(name_of(retry.answer.as_ref().unwrap()), ("mine", 2));
    assert_eq!(s.log.last(), 2, "applied once");
}

#[tokio::test]
async fn a_retried_create_superseded_since_is_recognised_by_the_duplicate_window() {
    // w1 created "a" at 1, r2 renamed it at 2; this copy saw neither.
    let log = MemoryLog::default();
    log.put(entry("a", Some("created"), "w1"));
    log.put(entry("a", Some("renamed"), "r2"));
    let s = setup(log, &[]);

    let create = WriteKind::Create {
        user: user("a", "created"),
    };
    let retry = s.writer.write(request("w1", create)).await;
    assert_eq!(
        name_of(retry.answer.as_ref().unwrap()),
        ("created", 1),
        "its first outcome, not 409"
    );
    assert_eq!(s.log.last(), 2);
}

#[tokio::test]
async fn a_request_past_its_deadline_is_dropped() {
    let s = setup(MemoryLog::default(), &[]);
    let mut late = request(
        "w1",
        WriteKind::Create {
            user: user("a", "late"),
        },
    );
    late.deadline = protocol::timing::now_ms() - 1;
    let answer = s.writer.write(late).await.answer;
    assert!(
        matches!(answer, Err(ProtocolError::Unavailable(_))),
        "{answer:?}"
    );
    assert_eq!(s.log.last(), 0, "never appended");
}

#[tokio::test]
async fn writes_to_one_record_follow_each_other_without_conflicts() {
    let s = setup(MemoryLog::default(), &[]);
    let create = WriteKind::Create {
        user: user("a", "0"),
    };
    s.writer.write(request("c", create)).await.answer.unwrap();
    // 50 concurrent renames of one record and 50 creates of others: all commit, in one order,
    // each decided on the one before it (the writer's overlay), none on a stale version.
    let renames = (1..=50).map(|i| {
        let writer = s.writer.clone();
        async move {
            writer
                .write(request(&format!("u{i}"), rename("a", &i.to_string(), None)))
                .await
        }
    });
    let creates = (1..=50).map(|i| {
        let writer = s.writer.clone();
        let create = WriteKind::Create {
            user: user(&format!("b{i}"), "b"),
        };
        async move { writer.write(request(&format!("b{i}"), create)).await }
    });
    let (renamed, created) = tokio::join!(
        futures::future::join_all(renames),
        futures::future::join_all(creates)
    );
    assert!(renamed.iter().chain(&created).all(|r| r.answer.is_ok()));
    assert_eq!(s.log.last(), 101);
    assert_eq!(
        s.log.conflicts(),
        0,
        "no write was decided on a stale version"
    );
    let mut versions: Vec<u64> = renamed.iter().map(|r| r.seen).collect();
    let sorted = {
        let mut v = versions.clone();
        v.sort();
        v
    };
    versions.dedup();
    assert_eq!(versions.len(), 50, "every rename its own version");
    assert_eq!(sorted.len(), 50);
}
