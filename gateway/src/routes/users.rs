//! The user resource: CRUD on one record (`/api/user`, `/api/user/{id}`), LIST and COUNT.
//! Each handler's `#[utoipa::path]` says what it answers on success; what it can refuse is
//! [`crate::openapi`]'s table.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{
    CountParams, FieldError, ListParams, NewUser, Reply, User, UserPatch, UserUpdate,
    VersionedUser, WriteKind,
};

use crate::error::ApiError;
use crate::extract::{encode_segment, IdPath, IfMatch, JsonBody, Query, RequestId};
use crate::list::Page;
use crate::state::AppState;

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
#[utoipa::path(get, path = "/api/user/{id}", tag = "users", security(("api_key" = [])),
    responses(
        (status = 200, description = "The user", body = User,
            headers(("ETag" = String, description = "The record's version, a strong entity-tag"))),
    ))]
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let record = state.store.get(&id).await??;
    Ok(user_response(StatusCode::OK, record))
}

/// Create a user; a missing `id` gets a UUID v4.
#[utoipa::path(post, path = "/api/user", tag = "users", security(("api_key" = [])),
    request_body(content = NewUser, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = User,
            headers(("ETag" = String), ("Location" = String))),
    ))]
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    request_id: RequestId,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    let user = body.into_user(|| request_id.generated_id());
    let location = format!("/api/user/{}", encode_segment(&user.id));
    let record = expect_user(write(&state, request_id.0, WriteKind::Create { user }).await?)?;
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
#[utoipa::path(put, path = "/api/user", tag = "users", security(("api_key" = [])),
    request_body(content = UserUpdate, content_type = "application/json",
        description = "The user's `id` and the fields to change"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
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
#[utoipa::path(patch, path = "/api/user/{id}", tag = "users", security(("api_key" = [])),
    request_body(content = UserPatch, content_type = "application/merge-patch+json",
        description = "The fields to change (the body may repeat the path's `id`; another id is 400)"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
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
#[utoipa::path(put, path = "/api/user/{id}", tag = "users", security(("api_key" = [])),
    request_body(content = UserPatch, content_type = "application/json",
        description = "The fields to change (the body may repeat the path's `id`; another id is 400)"),
    responses(
        (status = 200, description = "Updated", body = User, headers(("ETag" = String))),
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
#[utoipa::path(delete, path = "/api/user/{id}", tag = "users", security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
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

/// List users in bytewise id order, a page at a time.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("api_key" = [])), params(ListParams),
    responses((status = 200, description = "A page", body = Page)))]
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
    responses((status = 200, description = "The count", body = Count)))]
pub async fn count_users(
    State(state): State<Arc<AppState>>,
    Query(params): Query<CountParams>,
) -> Result<Json<Count>, ApiError> {
    Ok(Json(Count {
        count: state.store.count(params.group).await??,
    }))
}

/// `GET /api/users/count`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Count {
    /// Number of users.
    pub count: u64,
}
