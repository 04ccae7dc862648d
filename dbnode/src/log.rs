//! A partition's replication log: the JetStream stream `RINGSTORE_P{p}`, one subject per
//! record and at most one message per subject, so it always holds the latest entry of every
//! record (tombstones included) and is a complete copy of the partition.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{push, DeliverPolicy},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{Config, DiscardPolicy, StorageType},
};
use protocol::{subjects, LogEntry, PartitionId};

/// Why an append did not commit.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log already holds an entry with this request id (JetStream's duplicate window,
    /// two minutes): the request was committed before, at this sequence.
    #[error("request already committed at {0}")]
    Duplicate(u64),
    /// Someone else appended since the sequence we expected: catch up and retry.
    #[error("the log moved past the expected sequence")]
    Conflict,
    /// The log could not be reached or did not confirm in time. The entry may or may not be in
    /// the log; the caller finds out by catching up.
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

/// An append sent and not yet confirmed.
pub struct PendingAppend(async_nats::jetstream::context::PublishAckFuture);

impl PendingAppend {
    /// Waits for the log's answer: the entry's sequence once it is stored. This is the commit
    /// point of every write.
    pub async fn committed(self) -> Result<u64, AppendError> {
        match self.0.await {
            Ok(ack) if ack.duplicate => Err(AppendError::Duplicate(ack.sequence)),
            Ok(ack) => Ok(ack.sequence),
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
    }
}

/// The log could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("log unavailable: {0}")]
pub struct LogError(pub String);

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError(e.to_string())
}

/// Handle on one partition's stream.
#[derive(Clone)]
pub struct PartitionLog {
    js: jetstream::Context,
    client: async_nats::Client,
    partition: PartitionId,
}

impl PartitionLog {
    /// Creates the stream if it does not exist yet.
    pub async fn ensure(
        client: &async_nats::Client,
        partition: PartitionId,
    ) -> Result<Self, LogError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(1500));
        js.get_or_create_stream(Config {
            name: subjects::stream_name(partition),
            subjects: vec![subjects::log_filter(partition)],
            storage: StorageType::File,
            max_messages_per_subject: 1,
            discard: DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
        Ok(Self {
            js,
            client: client.clone(),
            partition,
        })
    }

    /// Sends `entry` to the log, to be stored only if the stream's last entry is still the
    /// one expected: sequence `expected_last` and, when given, message id `previous`. Sends
    /// from one writer reach the server in order, so a writer may have several appends in
    /// flight, each naming its predecessor; if one fails, every later one fails too.
    /// The request id is the message id, so a retry that reaches the log again is recognised
    /// even when the first entry has since been superseded by a newer write to the record.
    pub async fn send(
        &self,
        entry: &LogEntry,
        expected_last: u64,
        previous: Option<&str>,
    ) -> Result<PendingAppend, AppendError> {
        let payload = serde_json::to_vec(entry).expect("log entries serialise");
        let mut message = PublishMessage::build()
            .payload(payload.into())
            .message_id(&entry.request_id)
            .expected_last_sequence(expected_last);
        if let Some(previous) = previous {
            message = message.expected_last_message_id(previous);
        }
        self.publish(&entry.id, message).await
    }

    /// Sends `message` on the log subject of record `id`.
    async fn publish(
        &self,
        id: &str,
        message: PublishMessage,
    ) -> Result<PendingAppend, AppendError> {
        let subject = subjects::log_subject(self.partition, id);
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        Ok(PendingAppend(ack))
    }

    /// Whether the log took an entry for `request_id` within JetStream's duplicate window,
    /// and at which sequence, without appending anything: a publish with that message id and
    /// an expected last message id no entry has is either answered as a duplicate of the first
    /// entry (JetStream checks duplicates first) or refused. Used when a write is refused (409,
    /// 404, 412) to tell a retry of a write that did commit from a genuinely conflicting one.
    pub async fn find_request(&self, entry: &LogEntry) -> Result<Option<u64>, AppendError> {
        let message = PublishMessage::build()
            .message_id(&entry.request_id)
            .expected_last_message_id("ringstore: no entry has this id");
        match self.publish(&entry.id, message).await?.committed().await {
            Err(AppendError::Duplicate(seq)) => Ok(Some(seq)),
            Err(AppendError::Conflict) => Ok(None),
            Err(e) => Err(e),
            Ok(seq) => Err(AppendError::Unavailable(format!("probe stored at {seq}"))),
        }
    }

    /// The sequence of the newest entry (0 for an empty log).
    pub async fn last_sequence(&self) -> Result<u64, LogError> {
        let stream = self
            .js
            .get_stream(subjects::stream_name(self.partition))
            .await
            .map_err(unavailable)?;
        Ok(stream
            .get_info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence)
    }

    /// Every entry from sequence `from` on, in order, and then new ones as they are appended.
    /// The consumer recreates itself after reconnects; its errors are not terminal.
    pub async fn tail(&self, from: u64) -> Result<push::Ordered, LogError> {
        let stream = self
            .js
            .get_stream(subjects::stream_name(self.partition))
            .await
            .map_err(unavailable)?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: subjects::log_filter(self.partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        consumer.messages().await.map_err(unavailable)
    }
}
