//! A change-feed client for the tests: `GET /api/users/changes` read as Server-Sent Events.
//!
//! It parses the wire itself (fields, comments, events without data) rather than through an
//! `EventSource` library, because the tests assert on exactly what those hide: keep-alive
//! comments and the id-only first event.

use std::time::Duration;

use serde_json::Value;

/// One item of an SSE stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// A comment line (`: keep-alive`).
    Comment(String),
    /// An event: its `id`, `event` type and `data`, each if present.
    Event {
        /// `id:`.
        id: Option<String>,
        /// `event:`.
        event: Option<String>,
        /// `data:` lines, joined with `\n`.
        data: Option<String>,
    },
}

/// One change read from a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The event's `id`: a resume token.
    pub token: String,
    /// `upsert` or `delete`.
    pub op: String,
    /// The record.
    pub id: String,
    /// Its version after the change.
    pub version: u64,
    /// The record after the change; `Null` on a delete.
    pub user: Value,
}

/// What [`Feed::next_change`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// A change.
    Change(Change),
    /// `event: end`: the gateway ended the feed; `reason` from its data, `token` its id.
    End {
        /// Why.
        reason: String,
        /// Where to resume.
        token: String,
    },
    /// The stream closed without an `end` event (the gateway died).
    Closed,
    /// Nothing within the timeout.
    Quiet,
}

/// An open change feed.
pub struct Feed {
    response: reqwest::Response,
    buffer: String,
    closed: bool,
    /// The `id` of the last event read (an id-only event included), as an `EventSource`
    /// would send it on reconnecting.
    pub last_id: Option<String>,
}

/// Opens `GET {base}/api/users/changes{query}` with the bearer `key` and, if given,
/// `Last-Event-ID`. Returns the response when it is not 200.
pub async fn open(
    base: &str,
    key: Option<&str>,
    query: &str,
    last_event_id: Option<&str>,
) -> Result<Feed, reqwest::Response> {
    // No overall timeout: a feed lives as long as the test reads it.
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut request = http.get(format!("{base}/api/users/changes{query}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("the feed answers within 10 s")
        .expect("the feed request is sent");
    if response.status() != reqwest::StatusCode::OK {
        return Err(response);
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content type {content_type:?}"
    );
    Ok(Feed {
        response,
        buffer: String::new(),
        closed: false,
        last_id: last_event_id.map(str::to_owned),
    })
}

impl Feed {
    /// The next item, waiting up to `timeout`; `None` when the stream has ended or nothing
    /// came in time ([`Feed::is_closed`] tells which).
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(block_end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..block_end + 2).collect();
                return Some(self.parse(&block));
            }
            if self.closed {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("SSE is UTF-8")),
                Ok(Ok(None) | Err(_)) => self.closed = true,
            }
        }
    }

    /// True once the gateway closed the stream.
    pub fn is_closed(&self) -> bool {
        self.closed && !self.buffer.contains("\n\n")
    }

    fn parse(&mut self, block: &str) -> Sse {
        let (mut id, mut event, mut data) = (None, None, None::<String>);
        for line in block.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                return Sse::Comment(comment.trim().to_owned());
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => id = Some(value),
                "event" => event = Some(value),
                "data" => {
                    data = Some(match data {
                        Some(before) => format!("{before}\n{value}"),
                        None => value,
                    })
                }
                _ => {}
            }
        }
        if id.is_some() {
            self.last_id.clone_from(&id);
        }
        Sse::Event { id, event, data }
    }

    /// The next change or end, skipping comments and id-only events, waiting up to `timeout`
    /// for each item.
    pub async fn next_change(&mut self, timeout: Duration) -> Next {
        loop {
            match self.next(timeout).await {
                None if self.is_closed() => return Next::Closed,
                None => return Next::Quiet,
                Some(Sse::Comment(_)) | Some(Sse::Event { data: None, .. }) => {}
                Some(Sse::Event {
                    id,
                    event,
                    data: Some(data),
                }) => {
                    let token = id.expect("every feed event has an id");
                    let data: Value = serde_json::from_str(&data).expect("event data is JSON");
                    if event.as_deref() == Some("end") {
                        let reason = data["reason"].as_str().unwrap_or_default().to_owned();
                        return Next::End { reason, token };
                    }
                    assert_eq!(event, None, "a change is a default event");
                    return Next::Change(Change {
                        token,
                        op: data["op"].as_str().expect("op").to_owned(),
                        id: data["id"].as_str().expect("id").to_owned(),
                        version: data["version"].as_u64().expect("version"),
                        user: data["user"].clone(),
                    });
                }
            }
        }
    }

    /// Changes until `n` have come, failing after `timeout` without one.
    pub async fn changes(&mut self, n: usize, timeout: Duration) -> Vec<Change> {
        let mut changes = Vec::with_capacity(n);
        while changes.len() < n {
            match self.next_change(timeout).await {
                Next::Change(change) => changes.push(change),
                other => panic!(
                    "expected {n} changes, got {} and then {other:?}",
                    changes.len()
                ),
            }
        }
        changes
    }
}
