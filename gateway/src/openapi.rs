//! The OpenAPI document, generated from the handlers' annotations (`GET /openapi.json`).

use protocol::{FieldError, User};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::error::Problem;
use crate::list::Page;
use crate::routes;

/// Body of a create: a user whose `id` may be omitted (a UUID v4 is generated).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only: bodies are validated by `protocol::user`
pub struct NewUser {
    /// 1–128 bytes of printable Unicode, no `/`; generated when absent.
    #[schema(min_length = 1, max_length = 128)]
    id: Option<String>,
    /// 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// `local@domain.tld`.
    #[schema(format = "email", max_length = 254)]
    email: String,
    /// 0 ≤ group ≤ 2^31 − 1.
    #[schema(minimum = 0, maximum = 2147483647)]
    group: u32,
}

/// Body of a partial update: only the fields given change. `PUT /api/user` needs `id`;
/// on `/api/user/{id}` it may be omitted, and must equal the path's if given.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
pub struct UserChanges {
    /// The user to change.
    #[schema(min_length = 1, max_length = 128)]
    id: Option<String>,
    /// New name.
    #[schema(min_length = 1, max_length = 256)]
    name: Option<String>,
    /// New email.
    #[schema(format = "email", max_length = 254)]
    email: Option<String>,
    /// New group.
    #[schema(minimum = 0, maximum = 2147483647)]
    group: Option<u32>,
}

/// `GET /api/cluster`: every dbnode heard from.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: built as JSON in `routes::cluster`
pub struct ClusterView {
    nodes: Vec<NodeView>,
}

/// One dbnode in [`ClusterView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NodeView {
    /// `db-{i}`.
    node: String,
    /// `catching-up` or `ready`.
    state: String,
    /// Heard from within 3 s and ready.
    live: bool,
    /// Milliseconds since its last heartbeat.
    last_seen_ms: u64,
    /// Hosted partitions.
    partitions: Vec<PartitionView>,
}

/// One hosted partition in [`NodeView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PartitionView {
    partition: u32,
    /// `primary` or `replica`.
    role: String,
    /// Last applied log sequence.
    applied: u64,
    /// Log entries not yet applied.
    lag: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ringstore",
        description = "Partitioned, replicated user store on NATS. Errors are application/problem+json (RFC 9457). `POST` and `PUT` also answer on `/api/user/`."
    ),
    paths(
        routes::get_user,
        routes::create_user,
        routes::update_user,
        routes::patch_user,
        routes::put_user,
        routes::delete_user,
        routes::list_users,
        routes::count_users,
        routes::cluster,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi,
    ),
    components(schemas(
        User,
        NewUser,
        UserChanges,
        Problem,
        FieldError,
        ClusterView,
        Page,
        routes::Count
    ))
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
