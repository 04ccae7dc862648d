//! [`HttpReply`]: a response read to the end, and the assertions every scenario makes on one
//! (status, problem+json errors, ETag versions).

use reqwest::header::{HeaderMap, CONTENT_TYPE, ETAG};
use reqwest::{Response, StatusCode};
use serde_json::Value;

/// A gateway response with its body read: what a test asserts on.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// `METHOD url`, for messages.
    pub request: String,
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
}

impl HttpReply {
    /// Reads the whole response. `request` names it in failure messages.
    pub async fn read(request: &str, response: Response) -> HttpReply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{request}: the body did not arrive: {e}"));
        HttpReply {
            request: request.to_owned(),
            status,
            headers,
            text,
        }
    }

    /// The body as JSON; panics (showing the text) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{} → {}: body is not JSON ({e}): {:?}",
                self.request, self.status, self.text
            )
        })
    }

    /// A header's value; panics if it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{} → {}: no {name} header", self.request, self.status))
    }

    /// The `Content-Type`, or `""`.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `ETag` as a version number; panics if it is missing or not a number.
    pub fn etag(&self) -> u64 {
        etag_of(&self.headers)
            .unwrap_or_else(|| panic!("{} → {}: no numeric ETag", self.request, self.status))
    }
}

/// Parses an `ETag` header (`"7"`, `W/"7"` or `7`) as a version number.
pub fn etag_of(headers: &HeaderMap) -> Option<u64> {
    let raw = headers.get(ETAG)?.to_str().ok()?;
    raw.trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// The `ETag` of a response as a version number; panics if it is missing or not a number.
pub fn etag(response: &Response) -> u64 {
    etag_of(response.headers())
        .unwrap_or_else(|| panic!("{} {}: no numeric ETag", response.status(), response.url()))
}

/// Reads `response` and asserts its status; on a mismatch the panic shows the body.
pub async fn expect(response: Response, status: u16) -> HttpReply {
    let request = format!("{}", response.url());
    let reply = HttpReply::read(&request, response).await;
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{}: expected {status}, got {}; body: {}",
        reply.request,
        reply.status,
        reply.text
    );
    reply
}

/// Asserts an RFC 9457 error: the status, `Content-Type: application/problem+json`, and a
/// body whose `"status"` is that status. Returns the body.
pub async fn expect_problem(response: Response, status: u16) -> Value {
    let reply = expect(response, status).await;
    assert!(
        reply.content_type().starts_with("application/problem+json"),
        "{} → {status}: content type {:?} is not application/problem+json; body: {}",
        reply.request,
        reply.content_type(),
        reply.text
    );
    let body = reply.json();
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(status)),
        "{} → {status}: problem body's \"status\" field: {body}",
        reply.request
    );
    body
}
