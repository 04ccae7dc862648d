//! The REST handlers of DESIGN.md's table, each documented for OpenAPI.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{
    ChangeParams, CountParams, FieldError, ListParams, NewUser, Reply, Since, User, UserPatch,
    UserUpdate, VersionedUser, WriteKind,
};

use crate::error::{ApiError, Problem};
use crate::extract::{encode_segment, IdPath, IfMatch, JsonBody, LastEventId, Query, RequestId};
use crate::idempotency::{generated_id, KeyStore};
use crate::list::Page;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::openapi::{
    AuthRefused, BodyRefused, ChangeHeaders, ClusterView, CreateHeaders, FeedHeaders, Invalid,
    NeedsNode, NoUser, NodeView, PartitionView, PreconditionFailed, UserPath, WriteRefused,
};
use crate::presence::PresenceTable;
use crate::store::Store;

/// What every handler shares.
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
    /// How long a whole request may take (`MAX_REQUEST_MS`); then 408.
    pub max_request: std::time::Duration,
    /// The API keys (`API_KEYS_FILE`); `None`: no authentication.
    pub api_keys: Option<Arc<crate::auth::ApiKeys>>,
    /// The partition logs, read for change feeds and the cluster view; `None` without NATS
    /// (router tests), where change feeds are 503.
    pub logs: Option<Arc<Logs>>,
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
#[utoipa::path(get, path = "/api/user/{id}", tag = "users", security(("api_key" = [])), params(UserPath),
    responses(
        (status = 200, description = "The user", body = User,
            headers(("ETag" = String, description = "The record's version, a strong entity-tag"))),
        Invalid, NoUser, AuthRefused, NeedsNode,
    ))]
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let record = state.store.get(&id).await??;
    Ok(user_response(StatusCode::OK, record))
}

/// Create a user; a missing `id` gets a UUID v4.
#[utoipa::path(post, path = "/api/user", tag = "users", security(("api_key" = [])), params(CreateHeaders),
    request_body(content = NewUser, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = User,
            headers(("ETag" = String), ("Location" = String))),
        Invalid, AuthRefused, BodyRefused, WriteRefused, NeedsNode,
    ))]
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    let user = body.into_user(|| generated_id(&request_id));
    let location = format!("/api/user/{}", encode_segment(&user.id));
    let record = expect_user(write(&state, request_id, WriteKind::Create { user }).await?)?;
    let mut response = user_response(StatusCode::CREATED, record);
    let location = HeaderValue::from_str(&location).expect("encoded ids are valid headers");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

async fn update(
    state: Arc<AppState>,
    request_id: String,
    id: String,
    patch: UserPatch,
    if_match: Option<Vec<u64>>,
) -> Result<Response, ApiError> {
    let kind = WriteKind::Update {
        id,
        patch,
        if_match,
    };
    let record = expect_user(write(&state, request_id, kind).await?)?;
    Ok(user_response(StatusCode::OK, record))
}

/// Partial update with the id in the body: only the fields given change.
#[utoipa::path(put, path = "/api/user", tag = "users", security(("api_key" = [])), params(ChangeHeaders),
    request_body(content = UserUpdate, content_type = "application/json",
        description = "The user's `id` and the fields to change"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        Invalid, NoUser, AuthRefused, PreconditionFailed, BodyRefused, WriteRefused, NeedsNode,
    ))]
pub async fn update_user(
    State(state): State<Arc<AppState>>,
    RequestId(request_id): RequestId,
    IfMatch(if_match): IfMatch,
    JsonBody(body): JsonBody<UserUpdate>,
) -> Result<Response, ApiError> {
    let (id, patch) = body.into_parts();
    update(state, request_id, id, patch, if_match).await
}

/// Partial update of the user in the path (JSON merge patch, RFC 7396).
#[utoipa::path(patch, path = "/api/user/{id}", tag = "users", security(("api_key" = [])), params(UserPath, ChangeHeaders),
    request_body(content = UserPatch, content_type = "application/merge-patch+json",
        description = "The fields to change (the body may repeat the path's `id`; another id is 400)"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        Invalid, NoUser, AuthRefused, PreconditionFailed, BodyRefused, WriteRefused, NeedsNode,
    ))]
pub async fn patch_user(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
    RequestId(request_id): RequestId,
    IfMatch(if_match): IfMatch,
    JsonBody(mut patch): JsonBody<UserPatch>,
) -> Result<Response, ApiError> {
    if patch.id.take().is_some_and(|body_id| body_id != id) {
        let refused = FieldError::new("id", "must match the id in the path");
        return Err(ApiError::invalid(vec![refused]));
    }
    update(state, request_id, id, patch, if_match).await
}

/// Partial update of the user in the path, as `PATCH` (the `PUT` form of the original API).
#[utoipa::path(put, path = "/api/user/{id}", tag = "users", security(("api_key" = [])), params(UserPath, ChangeHeaders),
    request_body(content = UserPatch, content_type = "application/json",
        description = "The fields to change (the body may repeat the path's `id`; another id is 400)"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
        Invalid, NoUser, AuthRefused, PreconditionFailed, BodyRefused, WriteRefused, NeedsNode,
    ))]
pub async fn put_user(
    state: State<Arc<AppState>>,
    id: IdPath,
    request_id: RequestId,
    if_match: IfMatch,
    body: JsonBody<UserPatch>,
) -> Result<Response, ApiError> {
    patch_user(state, id, request_id, if_match, body).await
}

/// Delete a user.
#[utoipa::path(delete, path = "/api/user/{id}", tag = "users", security(("api_key" = [])), params(UserPath, ChangeHeaders),
    responses(
        (status = 204, description = "Deleted"),
        Invalid, NoUser, AuthRefused, PreconditionFailed, WriteRefused, NeedsNode,
    ))]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
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
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.store.ready().await {
        Ok("ready")
    } else {
        Err(ApiError::Protocol(protocol::ProtocolError::Unavailable(
            "NATS is not connected or a partition does not answer".into(),
        )))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), AuthRefused))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
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

/// The dbnodes as their heartbeats describe them: state, liveness, and per hosted partition
/// its role, applied log sequence and replication lag.
#[utoipa::path(get, path = "/api/cluster", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "Every dbnode heard from", body = ClusterView), AuthRefused))]
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<ClusterView> {
    let nodes = state
        .presence
        .snapshot()
        .into_iter()
        .map(|(silent_for, presence)| NodeView {
            node: presence.node,
            state: presence.state,
            live: state.presence.is_live(presence.node),
            last_seen_ms: silent_for.as_millis() as u64,
            partitions: presence.partitions,
        })
        .collect();
    let partitions = match &state.logs {
        Some(logs) => {
            let map = logs.map;
            futures::future::join_all(map.all().map(|p| async move {
                PartitionView {
                    partition: p,
                    primary: map.primary(p),
                    replica: map.replica(p),
                    log: logs.view(p).await,
                }
            }))
            .await
        }
        None => Vec::new(),
    };
    Json(ClusterView {
        nodes,
        partitions,
        nats: state.logs.as_ref().map(|logs| logs.nats()),
        traffic: state.metrics.traffic(),
        latency_buckets_ms: Metrics::latency_buckets_ms(),
        change_feeds: state.metrics.feeds_open(),
    })
}

/// List users in bytewise id order, a page at a time.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("api_key" = [])), params(ListParams),
    responses((status = 200, description = "A page", body = Page), Invalid, AuthRefused, NeedsNode))]
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ListParams>,
) -> Result<Json<Page>, ApiError> {
    let limit = params.limit();
    Ok(Json(
        state
            .store
            .scan(params.cursor, limit, params.group)
            .await??,
    ))
}

/// Count users, in total or in one group. Exact: counters move with the records.
#[utoipa::path(get, path = "/api/users/count", tag = "users", security(("api_key" = [])), params(CountParams),
    responses((status = 200, description = "The count", body = Count), Invalid, AuthRefused, NeedsNode))]
pub async fn count_users(
    State(state): State<Arc<AppState>>,
    Query(params): Query<CountParams>,
) -> Result<Json<Count>, ApiError> {
    Ok(Json(Count {
        count: state.store.count(params.group).await??,
    }))
}

/// Follow every committed change (Server-Sent Events). Each event's `id` is a resume token:
/// reconnecting with `Last-Event-ID` (an `EventSource` does it by itself) continues right after
/// that event, missing and repeating nothing. A feed that starts from the beginning, or from
/// far back, receives each record's latest change (the logs keep one entry per record), never
/// a stale one after a newer. Changes of one partition come in commit order; partitions are
/// interleaved. Keep-alive comments flow while nothing changes; a client that stops reading
/// for `CHANGE_FEED_STALL_MS` is ended with an `end` event (reconnect to continue).
#[utoipa::path(get, path = "/api/users/changes", tag = "users", security(("api_key" = [])),
    params(ChangeParams, FeedHeaders),
    responses(
        (status = 200, description = "An endless `text/event-stream`: first an event with only an \
            `id` (the starting position), then one event per change, `id` = resume token, `data` = \
            a `Change`; `event: end` with `data` = `{\"reason\": …}` when the gateway ends the feed",
            content_type = "text/event-stream", body = crate::feed::Change),
        Invalid, AuthRefused, NeedsNode,
    ))]
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ChangeParams>,
    LastEventId(last): LastEventId,
    connection: Option<axum::Extension<crate::connection::ConnectionHandle>>,
) -> Result<Response, ApiError> {
    // An EventSource reconnects to the same URL (`since=now` included): the header wins.
    let since = match (last, params.since) {
        (Some(position), _) => Since::After(position),
        (None, Some(since)) => since.parse().map_err(|_| {
            ApiError::invalid(vec![FieldError::new(
                "since",
                "not a position of this feed",
            )])
        })?,
        (None, None) => Since::Beginning,
    };
    let Some(logs) = state.logs.clone() else {
        return Err(ApiError::Protocol(protocol::ProtocolError::Unavailable(
            "this gateway has no partition logs to follow".into(),
        )));
    };
    let connection = connection.map(|axum::Extension(handle)| handle);
    crate::feed::open(logs, state.metrics.clone(), since, params.group, connection).await
}

/// `GET /api/users/count`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Count {
    /// Number of users.
    pub count: u64,
}
