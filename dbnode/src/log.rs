//! A partition's replication log: the JetStream stream `RINGSTORE_P{p}`, one subject per
//! record and at most one message per subject, so it always holds the latest entry of every
//! record (tombstones included) and is a complete copy of the partition.
//!
//! The writer sees the log through the [`Log`] trait (conditional append, a record's latest
//! entry, the duplicate-window probe), so that its interleavings can be tested against an
//! in-memory log; [`PartitionLog`] is the JetStream implementation, which also serves the
//! tailer (direct reads from a sequence on, and the writers' commit hints) and the log's
//! identity.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{Config, DiscardPolicy, LastRawMessageErrorKind, StorageType},
};
use futures::future::BoxFuture;
use protocol::{subjects, LogEntry, PartitionId};

/// How long one log operation may take before it counts as unavailable.
const LOG_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the log did with an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this sequence: committed.
    Stored(u64),
    /// Not stored: the log took an entry with this request id before (JetStream's duplicate
    /// window), at this sequence.
    Duplicate(u64),
}

/// Why an append did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The record's latest entry is not the one the append named: decide again on it.
    #[error("the record's latest log entry is not the expected one")]
    Conflict,
    /// The log could not be reached or did not confirm in time. The entry may or may not be in
    /// the log.
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

/// The log could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log unavailable: {0}")]
pub struct LogError(pub String);

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError(e.to_string())
}

/// A record's latest log entry and its sequence.
pub type Latest = Option<(u64, LogEntry)>;

/// The log as the writer uses it. Every operation is one round trip; futures own what they
/// need, so a writer can have many in flight.
pub trait Log: Send + Sync + 'static {
    /// Appends `entry` (message id = its request id) only if the latest entry of its record
    /// is at sequence `expected` (0: the record has no entry).
    fn append(
        &self,
        entry: &LogEntry,
        expected: u64,
    ) -> BoxFuture<'static, Result<Appended, AppendError>>;

    /// The latest entry of record `id`, read from the log's leader.
    fn latest(&self, id: &str) -> BoxFuture<'static, Result<Latest, LogError>>;

    /// Whether the log took an entry for `entry`'s request id within its duplicate window, and
    /// at which sequence, without storing anything.
    fn find_request(&self, entry: &LogEntry) -> BoxFuture<'static, Result<Option<u64>, LogError>>;

    /// Confirms through the log's consensus that the latest entry of record `id` is at
    /// `expected` (0: it has none), by appending a check marker on that condition: true if it
    /// is, false if the record has another latest entry.
    fn verify(&self, id: &str, expected: u64) -> BoxFuture<'static, Result<bool, LogError>>;
}

/// Handle on one partition's stream.
#[derive(Clone)]
pub struct PartitionLog {
    js: jetstream::Context,
    client: async_nats::Client,
    partition: PartitionId,
    /// The stream lives on a JetStream cluster (Raft-replicated), where the leader checks an
    /// append's message id *before* its expected sequences and proposes it without checking
    /// `Nats-Expected-Last-Msg-Id`, which every copy then checks on apply.
    clustered: bool,
}

/// The stream's identity and end, as the tailer checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The stream's creation time (ns since the Unix epoch): a recreated stream has another,
    /// later one. Answers carry it as the log's *epoch*.
    pub epoch: u64,
    /// The sequence of the newest entry (0 for an empty log).
    pub last: u64,
}

impl PartitionLog {
    /// The stream of partition `partition` as every node expects it: one message per record
    /// subject (the latest entry), no other limit, direct gets, `replicas` copies.
    fn config(partition: PartitionId, dedupe: Duration, replicas: usize) -> Config {
        Config {
            name: subjects::stream_name(partition),
            subjects: vec![subjects::log_filter(partition)],
            storage: StorageType::File,
            max_messages_per_subject: 1,
            discard: DiscardPolicy::Old,
            allow_direct: true,
            duplicate_window: dedupe,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Opens the stream of `partition`, creating it if it does not exist yet (with a duplicate
    /// window of `dedupe` and `replicas` copies) where this identity may, and refuses a stream
    /// whose retention or replica count is not [`PartitionLog::config`]'s: a log that keeps
    /// fewer entries, or expires or drops them, would lose records silently.
    pub async fn ensure(
        client: &async_nats::Client,
        partition: PartitionId,
        dedupe: Duration,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(LOG_TIMEOUT);
        let wanted = Self::config(partition, dedupe, replicas);
        let stream = js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(unavailable)?;
        let found = &stream.cached_info().config;
        let mut wrong = Vec::new();
        let mut check = |what: &str, ok: bool, found: String| {
            if !ok {
                wrong.push(format!("{what} is {found}"));
            }
        };
        check(
            "subjects",
            found.subjects == wanted.subjects,
            format!("{:?}", found.subjects),
        );
        check(
            "max_msgs_per_subject",
            found.max_messages_per_subject == 1,
            found.max_messages_per_subject.to_string(),
        );
        check(
            "max_msgs",
            found.max_messages < 0,
            found.max_messages.to_string(),
        );
        check(
            "max_bytes",
            found.max_bytes < 0,
            found.max_bytes.to_string(),
        );
        check(
            "max_age",
            found.max_age.is_zero(),
            format!("{:?}", found.max_age),
        );
        check("sealed", !found.sealed, found.sealed.to_string());
        check(
            "allow_direct",
            found.allow_direct,
            found.allow_direct.to_string(),
        );
        check(
            "replicas",
            found.num_replicas.max(1) == replicas.max(1),
            found.num_replicas.to_string(),
        );
        if !wrong.is_empty() {
            return Err(LogError(format!(
                "stream {} is not configured as a ringstore log ({}); fix it (as admin) or \
                 provision it again",
                wanted.name,
                wrong.join(", ")
            )));
        }
        let clustered = stream
            .cached_info()
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.name.is_some());
        Ok(Self {
            js,
            client: client.clone(),
            partition,
            clustered,
        })
    }

    /// Sends `message` on the log subject of record `id` and waits for the log's answer.
    fn publish(
        &self,
        id: &str,
        message: PublishMessage,
    ) -> BoxFuture<'static, Result<Appended, AppendError>> {
        self.publish_to(subjects::log_subject(self.partition, id), message)
    }

    /// Sends `message` on `subject` of the log and waits for the log's answer.
    fn publish_to(
        &self,
        subject: String,
        message: PublishMessage,
    ) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let js = self.js.clone();
        Box::pin(async move {
            let pending = js
                .send_publish(subject, message)
                .await
                .map_err(|e| AppendError::Unavailable(e.to_string()))?;
            match pending.await {
                Ok(ack) if ack.duplicate => Ok(Appended::Duplicate(ack.sequence)),
                Ok(ack) => Ok(Appended::Stored(ack.sequence)),
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
                    ) =>
                {
                    Err(AppendError::Conflict)
                }
                Err(e) => Err(AppendError::Unavailable(e.to_string())),
            }
        })
    }

    /// The stream's identity and last sequence, as the log's leader knows them. On a cluster
    /// a copy of the log that sees no leader (its server restarted or resumed from a pause and
    /// has not heard from the leader yet) answers too, from its own copy, which may be far
    /// behind the log; such an answer names no leader and is refused here.
    pub async fn state(&self) -> Result<LogState, LogError> {
        let stream = self
            .js
            .get_stream(subjects::stream_name(self.partition))
            .await
            .map_err(unavailable)?;
        let info = stream.cached_info();
        if let Some(cluster) = &info.cluster {
            if cluster.leader.as_deref().unwrap_or_default().is_empty() {
                return Err(LogError(
                    "the log has no leader; the state a copy of it reported may be stale".into(),
                ));
            }
        }
        Ok(LogState {
            epoch: info.created.unix_timestamp_nanos().max(0) as u64,
            last: info.state.last_sequence,
        })
    }

    /// The sequence of the newest entry (0 for an empty log).
    pub async fn last_sequence(&self) -> Result<u64, LogError> {
        Ok(self.state().await?.last)
    }

    /// A reader of the log by direct gets ([`runtime::LogReader`]): the tailer reads the log
    /// this way, never through a consumer.
    pub async fn reader(&self) -> Result<runtime::LogReader, LogError> {
        runtime::LogReader::open(self.client.clone(), self.partition, LOG_TIMEOUT)
            .await
            .map_err(unavailable)
    }

    /// Tells the partition's other readers (the other copy's tailer, the gateways' change
    /// feeds) that the log holds an entry at `seq` ([`subjects::committed_subject`]). A hint,
    /// never data: whoever reads it then reads the log.
    pub async fn hint(&self, seq: u64) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Sequence", seq.to_string().as_str());
        let subject = subjects::committed_subject(self.partition);
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, "".into())
            .await
        {
            tracing::debug!(partition = self.partition, error = %e, "commit hint not sent");
        }
    }

    /// The log's commit hints ([`subjects::committed_filter`]): a message soon after every
    /// entry a writer commits, naming its sequence.
    pub async fn hints(&self) -> Result<async_nats::Subscriber, LogError> {
        self.client
            .subscribe(subjects::committed_filter(self.partition))
            .await
            .map_err(unavailable)
    }
}

/// Creates the bucket of `Idempotency-Key`s if it does not exist yet, forgetting keys after
/// `ttl`, holding at most `max_bytes`, with `replicas` copies like the logs (on a NATS cluster, a bucket on one server would
/// stop every keyed write when that server does); refuses one with fewer copies. The gateways
/// use it; this node only provisions it.
pub async fn ensure_idempotency_bucket(
    client: &async_nats::Client,
    ttl: Duration,
    max_bytes: i64,
    replicas: usize,
) -> Result<(), LogError> {
    let js = jetstream::new(client.clone());
    let store = match js.get_key_value(subjects::IDEMPOTENCY_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(jetstream::kv::Config {
                bucket: subjects::IDEMPOTENCY_BUCKET.to_owned(),
                description: "ringstore Idempotency-Keys: fingerprint and first response"
                    .to_owned(),
                history: 1,
                max_age: ttl,
                max_bytes,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?,
    };
    let mut config = store.status().await.map_err(unavailable)?.info.config;
    if config.max_bytes < 0 {
        // A bucket made before keys were bounded: where this identity may (as `--provision`
        // does), the bound is added.
        let mut bounded = config.clone();
        bounded.max_bytes = max_bytes;
        if let Ok(info) = js.update_stream(&bounded).await {
            config = info.config;
        }
    }
    if config.max_bytes < 0 {
        return Err(LogError(format!(
            "the Idempotency-Key bucket has no size limit: bound it (as admin: `max_bytes`, \
             e.g. {max_bytes}) or provision it again; unbounded, keys could fill the store the \
             logs need"
        )));
    }
    let found = config.num_replicas;
    if found.max(1) < replicas.max(1) {
        return Err(LogError(format!(
            "the Idempotency-Key bucket has {found} replica(s), fewer than STREAM_REPLICAS \
             ({replicas}); fix it (as admin) or provision it again"
        )));
    }
    Ok(())
}

impl Log for PartitionLog {
    /// `Nats-Expected-Last-Subject-Sequence` = `expected`, the primitive of JetStream KV's
    /// `update(revision)`: whichever node writes, a decision made on a stale version of the
    /// record cannot commit.
    fn append(
        &self,
        entry: &LogEntry,
        expected: u64,
    ) -> BoxFuture<'static, Result<Appended, AppendError>> {
        let payload = serde_json::to_vec(entry).expect("log entries serialise");
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(&entry.request_id)
            .expected_last_subject_sequence(expected);
        self.publish(&entry.id, message)
    }

    fn latest(&self, id: &str) -> BoxFuture<'static, Result<Latest, LogError>> {
        let subject = subjects::log_subject(self.partition, id);
        let (js, stream) = (self.js.clone(), subjects::stream_name(self.partition));
        Box::pin(async move {
            let stream = js.get_stream_no_info(stream).await.map_err(unavailable)?;
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => {
                    let entry = serde_json::from_slice(&message.payload).map_err(|e| {
                        LogError(format!("undecodable entry {}: {e}", message.sequence))
                    })?;
                    Ok(Some((message.sequence, entry)))
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    /// A publish with the request id as message id and an expectation no entry meets, so that
    /// JetStream answers it as a duplicate of the first entry or refuses it; it is never
    /// stored. Which expectation depends on where JetStream checks duplicates:
    /// - on a single server, duplicates are checked before `Nats-Expected-Last-Msg-Id` and after
    ///   the expected sequences: the probe names a message id no entry has;
    /// - on a cluster, the leader checks duplicates first and then the expected sequences, all
    ///   before proposing, but passes `Nats-Expected-Last-Msg-Id` on to every copy's apply,
    ///   where a mismatch is a write error that can wedge the stream: the probe expects the
    ///   record's latest entry at a sequence no log reaches instead.
    fn find_request(&self, entry: &LogEntry) -> BoxFuture<'static, Result<Option<u64>, LogError>> {
        let message = PublishMessage::build().message_id(&entry.request_id);
        let message = if self.clustered {
            // The largest sequence nats-server parses exactly (it reads the header as an i64).
            message.expected_last_subject_sequence(i64::MAX as u64)
        } else {
            message.expected_last_message_id("ringstore: no entry has this id")
        };
        let probe = self.publish(&entry.id, message);
        Box::pin(async move {
            match probe.await {
                Ok(Appended::Duplicate(seq)) => Ok(Some(seq)),
                Err(AppendError::Conflict) => Ok(None),
                Err(AppendError::Unavailable(e)) => Err(LogError(e)),
                Ok(Appended::Stored(seq)) => Err(LogError(format!("probe stored at {seq}"))),
            }
        })
    }

    /// The marker goes to [`subjects::check_subject`] with
    /// `Nats-Expected-Last-Subject-Sequence-Subject` naming the record's subject, which the
    /// log's leader checks before proposing it, as it checks an entry's own subject.
    fn verify(&self, id: &str, expected: u64) -> BoxFuture<'static, Result<bool, LogError>> {
        let message = PublishMessage::build()
            .expected_last_subject_sequence(expected)
            .header(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                subjects::log_subject(self.partition, id),
            );
        let marker = self.publish_to(subjects::check_subject(self.partition), message);
        Box::pin(async move {
            match marker.await {
                Ok(_) => Ok(true),
                Err(AppendError::Conflict) => Ok(false),
                Err(AppendError::Unavailable(e)) => Err(LogError(e)),
            }
        })
    }
}
