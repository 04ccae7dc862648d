//! HTTP helpers on [`Cluster`]: one call per REST operation, ids percent-encoded
//! as one path segment, every request under a 10 s client timeout.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use crate::Cluster;

/// The client-side timeout of every request the helpers send.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client: 10 s timeout, pooled connections dropped after 1 s idle, no proxy from the
/// environment, and `key` (if any) as its bearer key on every request.
pub fn client(key: Option<&str>) -> reqwest::Client {
    client_trusting(key, None)
}

/// As [`client`], also trusting `tls`'s CA (for a gateway that serves HTTPS).
pub fn client_trusting(key: Option<&str>, tls: Option<&crate::TlsFiles>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        let value = format!("Bearer {key}")
            .parse()
            .expect("a key is a header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    // The gateway closes a keep-alive connection idle for HEADER_TIMEOUT_MS (2 s in some
    // tests): a pooled connection idle that long could be reused just as it is closed, a
    // request then failing without an answer. Well-behaved clients keep their pool's idle time
    // below the server's; so does this one.
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(std::time::Duration::from_millis(1000))
        .no_proxy()
        .default_headers(headers);
    if let Some(tls) = tls {
        builder = builder.add_root_certificate(tls.reqwest_ca());
    }
    builder.build().expect("an HTTP client")
}

/// Percent-encodes `s` as one URL path segment: every byte except the unreserved characters
/// `A–Z a–z 0–9 - . _ ~` (RFC 3986) becomes `%XX`.
pub fn encode_segment(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, RESERVED).to_string()
}

/// `/api/user/{id}` with the id encoded.
pub fn user_path(id: &str) -> String {
    format!("/api/user/{}", encode_segment(id))
}

impl Cluster {
    /// The shared HTTP client (10 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The gateway URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// A request to the gateway, for headers the helpers do not set (`If-Match`, bodies).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// `POST /api/user` with a JSON body.
    pub async fn create(&self, body: &Value) -> Response {
        send(
            "POST /api/user",
            self.request(Method::POST, "/api/user").json(body),
        )
        .await
    }

    /// `GET /api/user/{id}`.
    pub async fn get(&self, id: &str) -> Response {
        send(
            &format!("GET {id:?}"),
            self.request(Method::GET, &user_path(id)),
        )
        .await
    }

    /// `PUT /api/user` (partial update; the body carries the id).
    pub async fn put(&self, body: &Value) -> Response {
        send(
            "PUT /api/user",
            self.request(Method::PUT, "/api/user").json(body),
        )
        .await
    }

    /// `PUT /api/user/{id}` (partial update).
    pub async fn put_id(&self, id: &str, body: &Value) -> Response {
        let request = self.request(Method::PUT, &user_path(id)).json(body);
        send(&format!("PUT {id:?}"), request).await
    }

    /// `PATCH /api/user/{id}` with `application/merge-patch+json`.
    pub async fn patch(&self, id: &str, body: &Value) -> Response {
        let request = self
            .request(Method::PATCH, &user_path(id))
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .body(body.to_string());
        send(&format!("PATCH {id:?}"), request).await
    }

    /// The gateway's `/metrics`, as Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = send("metrics", self.request(Method::GET, "/metrics")).await;
        response.text().await.expect("the metrics text")
    }

    /// `DELETE /api/user/{id}`.
    pub async fn delete(&self, id: &str) -> Response {
        send(
            &format!("DELETE {id:?}"),
            self.request(Method::DELETE, &user_path(id)),
        )
        .await
    }
}

/// The value of the sample `name` (with its labels, if any) in the Prometheus text `metrics`;
/// 0 when absent.
pub fn metric_sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sends `request`; panics with `what` if no HTTP answer comes (connection refused, timeout).
pub async fn send(what: &str, request: RequestBuilder) -> Response {
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_segment("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn everything_else_is_percent_encoded_as_utf8() {
        assert_eq!(encode_segment("a*b"), "a%2Ab");
        assert_eq!(encode_segment("a>b"), "a%3Eb");
        assert_eq!(encode_segment("$SRV.PING"), "%24SRV.PING");
        assert_eq!(encode_segment("with space"), "with%20space");
        assert_eq!(encode_segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(encode_segment("üñí€"), "%C3%BC%C3%B1%C3%AD%E2%82%AC");
        assert_eq!(user_path("a.b"), "/api/user/a.b");
    }
}
