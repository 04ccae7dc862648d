//! `GET /status`: the cluster as a page for people (docs/design.md "REST API"). Plain HTML, CSS and
//! JavaScript compiled into the binary (no build step); the page reads `/api/cluster` and
//! follows `/api/users/changes` with the caller's API key, which it asks for when the gateway
//! has `API_KEYS_FILE` and keeps in the tab's session storage only.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../static/status.html");
const SCRIPT: &str = include_str!("../static/status.js");
const STYLE: &str = include_str!("../static/status.css");

/// Only this origin's own script and style, no framing, no referrer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// Its script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its style sheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
