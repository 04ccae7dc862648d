//! The REST handlers of DESIGN.md's table, each documented for OpenAPI.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::user::{parse_create, parse_patch};
use protocol::{Reply, User, VersionedUser, WriteKind};

use crate::error::{ApiError, Problem};
use crate::extract::{encode_segment, CountQuery, IdPath, IfMatch, JsonBody, ListQuery, RequestId};
use crate::idempotency::{generated_id, KeyStore};
use crate::list::Page;
use crate::metrics::Metrics;
use crate::openapi::{ClusterView, NewUser, UserChanges};
use crate::presence::PresenceTable;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Where records live.
    pub store: Arc<dyn Store>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Dbnode heartbeats.
    pub presence: Arc<PresenceTable>,
    /// Idempotency keys.
    pub keys: Arc<dyn KeyStore>,
    /// After how long a key whose first request never finished may be taken over.
    pub keys_abandoned_after: std::time::Duration,
    /// Requests served at once; more are shed with 503.
    pub max_concurrent: usize,
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

fn user_response(status: StatusCode, record: VersionedUser) -> Response {
    let mut response = (status, Json(record.user)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(record.version));
    response
}

/// The record a create or update answered with. Anything else would be another request's
/// outcome under the same request id, which ids derived from key *and* fingerprint rule out
/// ([`crate::idempotency`]); kept as a guard.
fn expect_user(reply: Reply) -> Result<VersionedUser, ApiError> {
    match reply {
        Reply::User(record) => Ok(record),
        _ => Err(ApiError::BadRequest(
            "this Idempotency-Key was already used for a different request".into(),
        )),
    }
}

async fn write(state: &AppState, request_id: String, kind: WriteKind) -> Result<Reply, ApiError> {
    Ok(state.store.write(request_id, kind).await??)
}

/// Read one user.
#[utoipa::path(get, path = "/api/user/{id}", tag = "users",
    params(("id" = String, Path, description = "The user id (percent-encoded)")),
    responses(
        (status = 200, description = "The user", body = User,
            headers(("ETag" = String, description = "The record's version"))),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String))),
        (status = 504, description = "The dbnode did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let record = state.store.get(&id).await??;
    Ok(user_response(StatusCode::OK, record))
}

/// Create a user; a missing `id` gets a UUID v4.
#[utoipa::path(post, path = "/api/user", tag = "users",
    request_body(content = NewUser, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. A retry with the same key and the same request returns the first response (marked Idempotent-Replayed: true) and applies nothing; the key on another request is 422; while the first is in progress, 409. Keys are remembered for 24 h.")),
    responses(
        (status = 201, description = "Created", body = User,
            headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id exists, or a request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = parse_create(&body, || generated_id(&request_id)).map_err(ApiError::invalid)?;
    let location = format!("/api/user/{}", encode_segment(&user.id));
    let record = expect_user(write(&state, request_id, WriteKind::Create { user }).await?)?;
    let mut response = user_response(StatusCode::CREATED, record);
    let location = HeaderValue::from_str(&location).expect("encoded ids are valid headers");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

async fn update(
    state: AppState,
    request_id: String,
    if_match: Option<u64>,
    body: serde_json::Value,
    path_id: Option<String>,
) -> Result<Response, ApiError> {
    let (id, patch) = parse_patch(&body, path_id.as_deref()).map_err(ApiError::invalid)?;
    let record = expect_user(
        write(
            &state,
            request_id,
            WriteKind::Update {
                id,
                patch,
                if_match,
            },
        )
        .await?,
    )?;
    Ok(user_response(StatusCode::OK, record))
}

/// Partial update with the id in the body: only the fields given change.
#[utoipa::path(put, path = "/api/user", tag = "users",
    request_body(content = UserChanges, content_type = "application/json"),
    params(
        ("If-Match" = Option<String>, Header, description = "Apply only if the ETag matches"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. A retry with the same key and the same request returns the first response (marked Idempotent-Replayed: true) and applies nothing; the key on another request is 422; while the first is in progress, 409. Keys are remembered for 24 h."),
    ),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String))),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    update(state, request_id, if_match, body, None).await
}

/// Partial update of the user in the path (`PUT` or JSON merge-patch `PATCH`).
#[utoipa::path(patch, path = "/api/user/{id}", tag = "users",
    request_body(content = UserChanges, content_type = "application/merge-patch+json"),
    params(
        ("id" = String, Path, description = "The user id (percent-encoded)"),
        ("If-Match" = Option<String>, Header, description = "Apply only if the ETag matches"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. A retry with the same key and the same request returns the first response (marked Idempotent-Replayed: true) and applies nothing; the key on another request is 422; while the first is in progress, 409. Keys are remembered for 24 h."),
    ),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        (status = 400, description = "Invalid body or id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String))),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn patch_user(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    RequestId(request_id): RequestId,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    update(state, request_id, if_match, body, Some(id)).await
}

/// Delete a user.
#[utoipa::path(delete, path = "/api/user/{id}", tag = "users",
    params(
        ("id" = String, Path, description = "The user id (percent-encoded)"),
        ("If-Match" = Option<String>, Header, description = "Apply only if the ETag matches"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. A retry with the same key and the same request returns the first response (marked Idempotent-Replayed: true) and applies nothing; the key on another request is 422; while the first is in progress, 409. Keys are remembered for 24 h."),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String))),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    RequestId(request_id): RequestId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, ApiError> {
    write(&state, request_id, WriteKind::Delete { id, if_match }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness: the gateway process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}

/// Readiness: NATS connected and every partition answering.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.store.ready().await {
        Ok("ready")
    } else {
        Err(ApiError::Protocol(protocol::ProtocolError::Unavailable(
            "NATS is not connected or a partition does not answer".into(),
        )))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.observe_presence(&state.presence.snapshot());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

/// Partial update of the user in the path, as `PATCH` (the `PUT` form of the original API).
#[utoipa::path(put, path = "/api/user/{id}", tag = "users",
    request_body(content = UserChanges, content_type = "application/json"),
    params(
        ("id" = String, Path, description = "The user id (percent-encoded)"),
        ("If-Match" = Option<String>, Header, description = "Apply only if the ETag matches"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. A retry with the same key and the same request returns the first response (marked Idempotent-Replayed: true) and applies nothing; the key on another request is 422; while the first is in progress, 409. Keys are remembered for 24 h."),
    ),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        (status = 400, description = "Invalid body or id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String))),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No dbnode serves the partition", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_user(
    state: State<AppState>,
    id: IdPath,
    request_id: RequestId,
    if_match: IfMatch,
    body: JsonBody,
) -> Result<Response, ApiError> {
    patch_user(state, id, request_id, if_match, body).await
}

/// The dbnodes as their heartbeats describe them: state, liveness, and per hosted partition
/// its role, applied log sequence and replication lag.
#[utoipa::path(get, path = "/api/cluster", tag = "operations",
    responses((status = 200, description = "Every dbnode heard from", body = ClusterView)))]
pub async fn cluster(State(state): State<AppState>) -> Json<serde_json::Value> {
    let nodes: Vec<_> = state
        .presence
        .snapshot()
        .into_iter()
        .map(|(silent_for, presence)| {
            serde_json::json!({
                "node": presence.node,
                "state": presence.state,
                "live": state.presence.is_live(presence.node),
                "last_seen_ms": silent_for.as_millis() as u64,
                "partitions": presence.partitions,
            })
        })
        .collect();
    Json(serde_json::json!({ "nodes": nodes }))
}

/// List users in bytewise id order, a page at a time.
#[utoipa::path(get, path = "/api/users", tag = "users",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1–1000 (default 50)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("group" = Option<u32>, Query, description = "Only users of this group", minimum = 0, maximum = 2147483647),
    ),
    responses(
        (status = 200, description = "A page", body = Page),
        (status = 400, description = "Bad limit, cursor or group", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A partition has no live dbnode", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Json<Page>, ApiError> {
    Ok(Json(
        state
            .store
            .scan(query.after, query.limit, query.group)
            .await??,
    ))
}

/// Count users, in total or in one group. Exact: counters move with the records.
#[utoipa::path(get, path = "/api/users/count", tag = "users",
    params(("group" = Option<u32>, Query, description = "Only users of this group", minimum = 0, maximum = 2147483647)),
    responses(
        (status = 200, description = "The count", body = Count),
        (status = 400, description = "Bad group", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A partition has no live dbnode", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timeout", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn count_users(
    State(state): State<AppState>,
    query: CountQuery,
) -> Result<Json<Count>, ApiError> {
    Ok(Json(Count {
        count: state.store.count(query.group).await??,
    }))
}

/// `GET /api/users/count`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Count {
    /// Number of users.
    pub count: u64,
}
