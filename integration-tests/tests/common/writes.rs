//! [`Write`]: one logical write with its Idempotency-Key, sent with one retry; the failures
//! a client saw, with their timestamps.

use std::time::Duration;

use integration_tests::{eventually, user_path, HttpReply};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::Api;

/// One logical write with its `Idempotency-Key`: retries send exactly the same request.
#[derive(Debug, Clone)]
pub struct Write {
    /// The record it writes.
    pub id: String,
    method: Method,
    path: String,
    body: Option<Value>,
    key: String,
    expected: StatusCode,
}

impl Write {
    fn new(id: &str, method: Method, path: String, body: Option<Value>, expected: u16) -> Write {
        Write {
            id: id.to_owned(),
            method,
            path,
            body,
            key: uuid::Uuid::new_v4().to_string(),
            expected: StatusCode::from_u16(expected).expect("a status code"),
        }
    }

    /// `POST /api/user` of a whole record.
    pub fn create(record: Value) -> Write {
        let id = record["id"].as_str().expect("records have ids").to_owned();
        Write::new(&id, Method::POST, "/api/user".into(), Some(record), 201)
    }

    /// `PUT /api/user/{id}`: a partial update of the given fields.
    pub fn update(id: &str, changes: Value) -> Write {
        Write::new(id, Method::PUT, user_path(id), Some(changes), 200)
    }

    /// `DELETE /api/user/{id}`.
    pub fn delete(id: &str) -> Write {
        Write::new(id, Method::DELETE, user_path(id), None, 204)
    }

    /// `METHOD path (key …)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} (key {})", self.method, self.path, self.key)
    }

    /// Sends the write once. `Err` for what a client would retry: no HTTP answer, or a 5xx.
    pub async fn send(&self, api: &Api) -> Result<HttpReply, String> {
        let url = format!("{}{}", api.base, self.path);
        let mut request = api
            .http
            .request(self.method.clone(), url)
            .header("Idempotency-Key", &self.key);
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.map_err(|e| format!("body: {e}"))?;
        if status.is_server_error() {
            return Err(format!("{status}: {text}"));
        }
        Ok(HttpReply {
            request: self.describe(),
            status,
            headers,
            text,
        })
    }

    /// Asserts the gateway accepted the write and answered with its effect.
    pub fn check(&self, reply: &HttpReply) {
        assert_eq!(
            reply.status,
            self.expected,
            "{}: expected {}, got {}: {}",
            self.describe(),
            self.expected,
            reply.status,
            reply.text
        );
        if let Some(body) = &self.body {
            let answered = reply.json();
            for (field, value) in body.as_object().expect("bodies are objects") {
                assert_eq!(
                    &answered[field],
                    value,
                    "{}: the answer shows the write",
                    self.describe()
                );
            }
        }
    }
}

/// A write attempt that got no usable answer.
#[derive(Debug, Clone)]
pub struct Failure {
    started: Instant,
    ended: Instant,
    what: String,
    error: String,
}

/// Every failed attempt, the failures a client saw after its one retry, and the slowest
/// acknowledged write (its start, and how long the client waited, retry included).
#[derive(Debug, Default)]
pub struct Failures {
    /// Every attempt that got no usable answer.
    pub attempts: Vec<Failure>,
    visible: Vec<Failure>,
    slowest: Option<(Duration, Instant)>,
}

impl Failures {
    /// Adds another client's failures.
    pub fn merge(&mut self, other: Failures) {
        self.attempts.extend(other.attempts);
        self.visible.extend(other.visible);
        self.slowest = self.slowest.max(other.slowest);
    }

    /// From the start of the first failed attempt to the end of the last one (0 if none).
    fn window(&self) -> Duration {
        let first = self.attempts.iter().map(|f| f.started).min();
        let last = self.attempts.iter().map(|f| f.ended).max();
        match (first, last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }

    /// Prints the window and the slowest write, timed from `fault`.
    pub fn report(&self, what: &str, fault: Instant) {
        eprintln!(
            "== measured: {what}: unavailability window {:?} ({} failed attempts, {} failures \
             visible after one retry)",
            self.window(),
            self.attempts.len(),
            self.visible.len()
        );
        if let Some((took, started)) = self.slowest {
            let at = match started.checked_duration_since(fault) {
                Some(after) => format!("{after:?} after"),
                None => format!("{:?} before", fault - started),
            };
            eprintln!("== measured: {what}: slowest acknowledged write took {took:?}, sent {at} the fault");
        }
        for f in &self.attempts {
            eprintln!("   failed attempt: {} — {}", f.what, f.error);
        }
    }

    /// Asserts that every failure a client saw overlapped `[from, from + allowed]`.
    pub fn assert_visible_only_within(&self, from: Instant, allowed: Duration) {
        for f in &self.visible {
            assert!(
                f.ended >= from && f.started <= from + allowed,
                "a client saw a failure outside the {allowed:?} after the fault \
                 (started {:?} after it): {} — {}",
                f.started.saturating_duration_since(from),
                f.what,
                f.error
            );
        }
    }
}

/// Sends `write`, and once more with the same key if it fails; `None` if both fail.
pub async fn write_retried(api: &Api, write: &Write, failures: &mut Failures) -> Option<HttpReply> {
    let first = Instant::now();
    for attempt in 0..2 {
        let started = Instant::now();
        match write.send(api).await {
            Ok(reply) => {
                write.check(&reply);
                failures.slowest = failures.slowest.max(Some((first.elapsed(), first)));
                return Some(reply);
            }
            Err(error) => {
                let failure = Failure {
                    started,
                    ended: Instant::now(),
                    what: write.describe(),
                    error,
                };
                if attempt == 1 {
                    failures.visible.push(Failure {
                        started: first,
                        ..failure.clone()
                    });
                }
                failures.attempts.push(failure);
            }
        }
    }
    None
}

/// Re-sends a write whose attempts all failed, with its key, until it gets an answer (10 s).
pub async fn resolve(api: &Api, write: &Write) -> HttpReply {
    let reply = eventually(Duration::from_secs(10), || async {
        write.send(api).await.ok()
    })
    .await;
    write.check(&reply);
    reply
}
