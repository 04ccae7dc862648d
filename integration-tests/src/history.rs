//! Recorded histories for the linearizability test: every operation a client made, with the
//! times it was invoked and completed (on one clock) and what it returned. An answer that does
//! not say whether the operation took effect (a timeout, a 5xx) is recorded as
//! [`Outcome::Unknown`]: the checker lets such an operation take effect at any time after its
//! invocation, or never.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::http::user_path;

/// What a client asked for, on one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// `GET /api/user/{id}`.
    Read,
    /// `POST /api/user` with this name.
    Create(String),
    /// `PATCH /api/user/{id}` setting this name.
    Update(String),
    /// `PATCH /api/user/{id}` with `If-Match: "{version}"`, setting this name.
    Cas(u64, String),
    /// `DELETE /api/user/{id}`.
    Delete,
}

/// Why a write was refused: a definite answer that it did not take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 409: the id exists.
    Exists,
    /// 404: no such record.
    Missing,
    /// 412: the version did not match.
    Mismatch,
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read's answer: the record's name and version, or `None` for 404.
    Read(Option<(String, u64)>),
    /// A write took effect, as this version (0 for a delete).
    Written(u64),
    /// A write was refused.
    Refused(Refusal),
    /// No definite answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that made it (one operation at a time per client).
    pub client: usize,
    /// The record id.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was sent, in µs since the history began.
    pub invoked: u64,
    /// When its answer came, in µs (for an unknown outcome: when the client gave up).
    pub completed: u64,
    /// What it returned.
    pub outcome: Outcome,
}

/// Collects operations from concurrent clients, timed on one clock.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    operations: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            operations: Arc::default(),
        }
    }

    /// µs since the history began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Performs `call` on `key` through the gateway at `base` and records it.
    pub async fn perform(
        &self,
        http: &reqwest::Client,
        base: &str,
        client: usize,
        key: &str,
        call: Call,
    ) -> Outcome {
        let invoked = self.now();
        let (outcome, retry_after) = send(http, base, key, &call).await;
        let completed = self.now();
        let operation = Operation {
            client,
            key: key.to_owned(),
            call,
            invoked,
            completed,
            outcome: outcome.clone(),
        };
        self.operations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(operation);
        // The client honours `Retry-After`, as an HTTP client should: one that did not would
        // answer an outage with hundreds of requests failing at once (2,758 unknown outcomes
        // in one 25 s run under NATS-server pauses), each an open write for the checker.
        if let Some(wait) = retry_after {
            tokio::time::sleep(wait).await;
        }
        outcome
    }

    /// Every operation recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.operations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How long a client waits for any answer before it records the operation as unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` a client honours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Performs `call`: its outcome, and how long the answer asked the client to wait before its
/// next request (`Retry-After`, in seconds, capped at [`MAX_RETRY_AFTER`]).
async fn send(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    call: &Call,
) -> (Outcome, Option<Duration>) {
    let url = format!("{base}{}", user_path(key));
    let merge = "application/merge-patch+json";
    let request = match call {
        Call::Read => http.get(&url),
        Call::Create(name) => http.post(format!("{base}/api/user")).json(&json!({
            "id": key, "name": name, "email": "lin@example.com", "group": 1
        })),
        Call::Update(name) => http
            .request(Method::PATCH, &url)
            .header("content-type", merge)
            .body(json!({ "name": name }).to_string()),
        Call::Cas(version, name) => http
            .request(Method::PATCH, &url)
            .header("content-type", merge)
            .header("if-match", format!("\"{version}\""))
            .body(json!({ "name": name }).to_string()),
        Call::Delete => http.delete(&url),
    };
    let Ok(response) = request.timeout(CLIENT_TIMEOUT).send().await else {
        return (Outcome::Unknown, None);
    };
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    (outcome(call, response).await, retry_after)
}

/// What `response` says of `call`.
async fn outcome(call: &Call, response: reqwest::Response) -> Outcome {
    let status = response.status();
    let version = crate::etag_of(response.headers()).unwrap_or(0);
    match (call, status) {
        (Call::Read, StatusCode::OK) => match response.json::<serde_json::Value>().await {
            Ok(body) => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                Outcome::Read(Some((name, version)))
            }
            Err(_) => Outcome::Unknown,
        },
        (Call::Read, StatusCode::NOT_FOUND) => Outcome::Read(None),
        (Call::Create(_), StatusCode::CREATED) => Outcome::Written(version),
        (Call::Update(_) | Call::Cas(..), StatusCode::OK) => Outcome::Written(version),
        (Call::Delete, StatusCode::NO_CONTENT) => Outcome::Written(0),
        (Call::Create(_), StatusCode::CONFLICT) => Outcome::Refused(Refusal::Exists),
        (Call::Update(_) | Call::Cas(..) | Call::Delete, StatusCode::NOT_FOUND) => {
            Outcome::Refused(Refusal::Missing)
        }
        (Call::Cas(..), StatusCode::PRECONDITION_FAILED) => Outcome::Refused(Refusal::Mismatch),
        _ => Outcome::Unknown,
    }
}
