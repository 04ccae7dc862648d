//! Reading a partition log without a consumer: JetStream direct gets in batches, answered to
//! the reader's own inbox (docs/security.md, "The logs are read, never consumed").
//!
//! A JetStream consumer delivers to a subject its *creator* chooses, in the account of the
//! stream: an identity allowed to create consumers could make the server deliver one log's
//! entries onto another log's subjects, where the stream would store them. A direct get
//! answers only to the request's reply subject, which for a client of another account is
//! mapped back into that client's own account. So the copies (the dbnode's tailer) and the
//! gateway's change feeds read the logs with [`LogReader::fetch`]: up to `max` entries from a
//! sequence on, and the count of entries left after them (`Nats-Num-Pending` of the batch's
//! end-of-batch marker). "Nothing left" (`pending == Some(0)`) is what a reader that wants to
//! be caught up waits for; a log whose last sequences were purged has nothing left to deliver
//! there, whatever its `last_seq` says.
//!
//! What moves a reader between fetches is up to it: the writers' commit hints on
//! [`protocol::subjects::committed_filter`], a timer, or a local commit.

use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use protocol::{subjects, PartitionId};

/// One entry as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject (`ringstore.log.{p}.{hex(id)}`, or the check subject).
    pub subject: String,
    /// When the log stored it (RFC 3339, as JetStream reports it).
    pub time: String,
    /// Entries after it, as counted when the batch began (an upper bound).
    pub pending: u64,
    /// The entry.
    pub payload: Bytes,
}

/// What one fetch found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The entries, in log order.
    pub messages: Vec<LogMessage>,
    /// Entries left after the last one (after the start, if there are none): `Some(0)` when
    /// the log had nothing more to deliver as the batch ended; `None` when the batch's end
    /// never came (cut short by the timeout).
    pub pending: Option<u64>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogReadError {
    /// No server answered for the stream (it does not exist, or this identity cannot reach it).
    #[error("no responders for {0}")]
    NoResponders(String),
    /// Nothing came back in time.
    #[error("the log did not answer within {0:?}")]
    TimedOut(Duration),
    /// The server refused the request or answered something unexpected.
    #[error("the log refused the read: {0}")]
    Refused(String),
    /// NATS itself failed (the connection is closed).
    #[error("nats: {0}")]
    Nats(String),
}

/// Reads one partition's log by direct gets. One fetch at a time: it owns the subscription its
/// answers arrive on (one per reader, not one per fetch), and each fetch's reply subject is a
/// fresh token under it, so answers to an earlier fetch that timed out are told apart.
pub struct LogReader {
    client: Client,
    partition: PartitionId,
    request: String,
    inbox: String,
    answers: Subscriber,
    fetches: u64,
    timeout: Duration,
}

impl LogReader {
    /// A reader of partition `partition`'s log through `client`; each fetch waits at most
    /// `timeout` for its answers.
    pub async fn open(
        client: Client,
        partition: PartitionId,
        timeout: Duration,
    ) -> Result<Self, LogReadError> {
        let inbox = client.new_inbox();
        let answers = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| LogReadError::Nats(e.to_string()))?;
        Ok(Self {
            client,
            partition,
            request: subjects::direct_get(partition),
            inbox,
            answers,
            fetches: 0,
            timeout,
        })
    }

    /// The partition this reader reads.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Up to `max` entries from sequence `from` on (sequences the log no longer holds are
    /// stepped over), and how many are left after them.
    pub async fn fetch(&mut self, from: u64, max: usize) -> Result<Batch, LogReadError> {
        self.fetches += 1;
        let reply = format!("{}.{}", self.inbox, self.fetches);
        let body = format!(r#"{{"seq":{},"batch":{}}}"#, from.max(1), max.max(1));
        self.client
            .publish_with_reply(self.request.clone(), reply.clone(), body.into())
            .await
            .map_err(|e| LogReadError::Nats(e.to_string()))?;
        let timeout = self.timeout;
        let mut batch = Batch::default();
        let collect = async {
            while let Some(message) = self.answers.next().await {
                if message.subject.as_str() != reply {
                    continue; // an answer to an earlier fetch, given up on
                }
                match read(message)? {
                    Answer::Entry(entry) => batch.messages.push(entry),
                    Answer::End(pending) => {
                        batch.pending = Some(pending);
                        return Ok(());
                    }
                }
            }
            Err(LogReadError::Nats("the reader's subscription ended".into()))
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(Ok(())) => Ok(batch),
            Ok(Err(e)) => Err(e),
            Err(_) if !batch.messages.is_empty() => Ok(batch),
            Err(_) => Err(LogReadError::TimedOut(timeout)),
        }
    }
}

impl LogReader {
    /// The sequence of the first entry at or after `from` as the log's **leader** holds it
    /// (`None`: there is none). A message get, which only the leader of an R3 log answers,
    /// where any of its servers answers a direct get: a batch's "nothing left" can come from a
    /// server that is behind, this cannot.
    pub async fn leader_next(&self, from: u64) -> Result<Option<u64>, LogReadError> {
        let subject = format!(
            "$JS.API.STREAM.MSG.GET.{}",
            subjects::stream_name(self.partition)
        );
        let body = format!(
            r#"{{"seq":{},"next_by_subj":"{}"}}"#,
            from.max(1),
            subjects::log_filter(self.partition)
        );
        let ask = self.client.request(subject.clone(), body.into());
        let answer = tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| LogReadError::TimedOut(self.timeout))?
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => LogReadError::NoResponders(subject),
                _ => LogReadError::Nats(e.to_string()),
            })?;
        #[derive(serde::Deserialize)]
        struct Found {
            seq: u64,
        }
        #[derive(serde::Deserialize)]
        struct Refusal {
            code: u16,
            #[serde(default)]
            description: String,
        }
        #[derive(serde::Deserialize)]
        struct MsgGet {
            message: Option<Found>,
            error: Option<Refusal>,
        }
        let got: MsgGet = serde_json::from_slice(&answer.payload)
            .map_err(|e| LogReadError::Refused(format!("a message get answer: {e}")))?;
        match (got.message, got.error) {
            (Some(found), _) => Ok(Some(found.seq)),
            (None, Some(refusal)) if refusal.code == 404 => Ok(None),
            (None, Some(refusal)) => Err(LogReadError::Refused(format!(
                "{} {}",
                refusal.code, refusal.description
            ))),
            (None, None) => Err(LogReadError::Refused("an empty message get answer".into())),
        }
    }

    /// The entries at exactly the sequences `from..=to` (at most [`EXACT_MAX`]), asked all at
    /// once, one direct get each: cheaper for the server than a batch, whose count of what is
    /// left costs it a walk of the subjects of a block once the log has deleted entries (every
    /// update deletes one). A sequence is absent when the log no longer holds it *or* when the
    /// server that answered for it (any of the log's servers may) does not hold it yet: only
    /// a batch, one server's answer, tells the two apart. The batch's `pending` is `None`: an
    /// exact read says nothing of what follows `to`.
    pub async fn fetch_exact(&mut self, from: u64, to: u64) -> Result<Batch, LogReadError> {
        let to = to.min(from + EXACT_MAX - 1);
        self.fetches += 1;
        let tag = format!("{}.x{}", self.inbox, self.fetches);
        for seq in from..=to {
            let reply = format!("{tag}-{seq}");
            let body = format!(r#"{{"seq":{seq}}}"#);
            self.client
                .publish_with_reply(self.request.clone(), reply, body.into())
                .await
                .map_err(|e| LogReadError::Nats(e.to_string()))?;
        }
        let mut answered = 0;
        let mut batch = Batch::default();
        let wanted = (to - from + 1) as usize;
        let prefix = format!("{tag}-");
        let collect = async {
            while let Some(message) = self.answers.next().await {
                if !message.subject.as_str().starts_with(&prefix) {
                    continue; // an answer to an earlier fetch
                }
                answered += 1;
                if let Answer::Entry(entry) = read(message)? {
                    batch.messages.push(entry);
                }
                if answered == wanted {
                    return Ok(());
                }
            }
            Err(LogReadError::Nats("the reader's subscription ended".into()))
        };
        match tokio::time::timeout(self.timeout, collect).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) if !batch.messages.is_empty() => {}
            Err(_) => return Err(LogReadError::TimedOut(self.timeout)),
        }
        batch.messages.sort_by_key(|m| m.seq);
        for message in &mut batch.messages {
            message.pending = to - message.seq;
        }
        Ok(batch)
    }
}

/// The most sequences one [`LogReader::fetch_exact`] asks for.
pub const EXACT_MAX: u64 = 64;

/// One message of a direct-get answer.
enum Answer {
    Entry(LogMessage),
    /// The end of the batch, with the count of entries left after it.
    End(u64),
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

fn number(message: &Message, name: &str) -> Option<u64> {
    header(message, name)?.parse().ok()
}

fn read(message: Message) -> Result<Answer, LogReadError> {
    match message.status.map(|s| s.as_u16()) {
        // End of batch.
        Some(204) => Ok(Answer::End(
            number(&message, "Nats-Num-Pending").unwrap_or(0),
        )),
        // Nothing at or after the sequence asked for.
        Some(404) => Ok(Answer::End(0)),
        Some(code) if code == StatusCode::NO_RESPONDERS.as_u16() => {
            Err(LogReadError::NoResponders(message.subject.to_string()))
        }
        Some(code) if code >= 300 => Err(LogReadError::Refused(format!(
            "{code} {}",
            message.description.as_deref().unwrap_or_default()
        ))),
        _ => {
            let seq = number(&message, "Nats-Sequence")
                .ok_or_else(|| LogReadError::Refused("an entry without Nats-Sequence".into()))?;
            Ok(Answer::Entry(LogMessage {
                seq,
                subject: header(&message, "Nats-Subject")
                    .unwrap_or_default()
                    .to_owned(),
                time: header(&message, "Nats-Time-Stamp")
                    .unwrap_or_default()
                    .to_owned(),
                pending: number(&message, "Nats-Num-Pending").unwrap_or(u64::MAX),
                payload: message.payload,
            }))
        }
    }
}

/// The stream sequence a commit hint names (its `Nats-Sequence`), if it names one.
pub fn hinted_sequence(hint: &Message) -> Option<u64> {
    number(hint, "Nats-Sequence")
}
