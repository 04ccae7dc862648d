//! The OpenAPI document (`GET /openapi.json`), generated from the handlers' annotations and
//! the typed model of [`protocol::user`] and [`protocol::params`]: every constraint the server
//! enforces comes from the code that enforces it. The refusals shared by several operations
//! are declared once here and reused.

use protocol::{FieldError, NewUser, User, UserPatch, UserUpdate};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, IntoResponses, OpenApi};

use crate::error::Problem;
use crate::idempotency::MAX_KEY_LEN;
use crate::list::Page;
use crate::routes;

/// `If-Match` (RFC 9110 13.1.1): `*`, or entity-tags separated by commas (a weak tag never
/// matches: strong comparison), or a bare version number as earlier versions accepted.
pub const IF_MATCH_PATTERN: &str = r#"^(\*|[0-9]+|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)$"#;

fn if_match() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(IF_MATCH_PATTERN))
        .examples([
            serde_json::json!("\"1\""),
            serde_json::json!("\"1\", \"2\""),
        ])
}

fn idempotency_key() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(format!("^[!-~]{{1,{MAX_KEY_LEN}}}$")))
        .min_length(Some(1))
        .max_length(Some(MAX_KEY_LEN))
        .examples([serde_json::json!("8e03978e-40d5-43e8-bc93-6894a57f9324")])
}

/// The headers of a create.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `crate::idempotency` from the request, declared here
pub struct CreateHeaders {
    /// 1-255 visible ASCII characters (draft-ietf-httpapi-idempotency-key-header-07). A retry
    /// with the same key and the same request (method, target, body) returns the first
    /// response, marked `Idempotent-Replayed: true`, and applies nothing; the key on another
    /// request is 422; while the first request is in progress, 409. Keys are remembered for
    /// 24 hours (`IDEMPOTENCY_KEY_TTL_SECS`).
    #[param(rename = "Idempotency-Key", schema_with = idempotency_key)]
    idempotency_key: Option<String>,
}

/// The headers of an update or a delete.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `crate::extract::IfMatch` and `crate::idempotency`
pub struct ChangeHeaders {
    /// Apply only if the record's `ETag` is one of these (strong comparison: `W/` tags never
    /// match; a bare number `7` means `"7"`); `*` or absent: unconditionally.
    #[param(rename = "If-Match", schema_with = if_match)]
    if_match: Option<String>,
    /// As on create.
    #[param(rename = "Idempotency-Key", schema_with = idempotency_key)]
    idempotency_key: Option<String>,
}

/// The headers of a change feed.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `crate::extract::LastEventId`
pub struct FeedHeaders {
    /// The `id` of the last event received: continue right after it (takes precedence over
    /// `since`).
    #[param(rename = "Last-Event-ID", schema_with = last_event_id)]
    last_event_id: Option<String>,
}

fn last_event_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(r"^[0-9a-f]{8}(\.[0-9]{1,20}){1,64}$"))
        .examples([serde_json::json!("5e2a90c1.17.4.22")])
}

/// The path of one user.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by `crate::extract::IdPath`
pub struct UserPath {
    /// The user id, percent-encoded as one path segment.
    #[param(schema_with = protocol::user::schema::id, required = true)]
    id: String,
}

/// Refusals of a call that needs a dbnode.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum NeedsNode {
    /// No dbnode serves the partition, or the gateway is at `MAX_CONCURRENT_REQUESTS`.
    #[response(status = 503, content_type = "application/problem+json",
        headers(("Retry-After" = u32, description = "Seconds to wait before retrying")))]
    Unavailable(Problem),
    /// No dbnode answered within `REQUEST_TIMEOUT_MS`; a write may or may not have been applied
    /// (retry it with the same `Idempotency-Key`).
    #[response(status = 504, content_type = "application/problem+json")]
    Timeout(Problem),
    /// A dbnode failed (a bug or a storage failure); the logs say more.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
}

/// Refusals of a call without a valid API key (when the gateway has `API_KEYS_FILE`).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AuthRefused {
    /// No `Authorization: Bearer` key, or one the gateway does not know.
    #[response(status = 401, content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"ringstore\"`, with `error=\"invalid_token\"` for an unknown key")))]
    Unauthenticated(Problem),
    /// The key lacks the scope the call needs (`read`, `write` or `admin`).
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// Declares the bearer scheme of [`crate::auth`].
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key from the gateway's API_KEYS_FILE. Scopes: `read` for GET of users, \
                 `write` for POST/PUT/PATCH/DELETE, `admin` for /api/cluster and /metrics. \
                 Without API_KEYS_FILE the gateway asks for no key.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// A malformed id, body, parameter or header.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Invalid {
    /// What is wrong, with every offending field in `errors`.
    #[response(status = 400, content_type = "application/problem+json")]
    Invalid(Problem),
}

/// No user with this id.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum NoUser {
    /// No user with this id.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
}

/// Refusals of a request body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyRefused {
    /// The body is larger than 64 KiB.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not `application/json` (or another `+json` type).
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
    /// The write, body upload included, took longer than `MAX_REQUEST_MS`.
    #[response(status = 408, content_type = "application/problem+json")]
    TooSlow(Problem),
}

/// Refusals of a write that carries an `Idempotency-Key`, and of a conditional write.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum WriteRefused {
    /// The first request with this `Idempotency-Key` is still in progress (or, on create,
    /// a user with this id exists).
    #[response(status = 409, content_type = "application/problem+json",
        headers(("Retry-After" = u32, description = "Seconds to wait, when the key is in use")))]
    Conflict(Problem),
    /// This `Idempotency-Key` was used for a different request.
    #[response(status = 422, content_type = "application/problem+json")]
    KeyReused(Problem),
    /// The store of `Idempotency-Key`s is full (`IDEMPOTENCY_KEY_MAX_BYTES`) until older keys
    /// expire: nothing was done.
    #[response(status = 507, content_type = "application/problem+json")]
    KeysFull(Problem),
}

/// A failed `If-Match`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum PreconditionFailed {
    /// The record's version is not one `If-Match` names.
    #[response(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Problem),
}

/// `GET /api/cluster`: the dbnodes heard from, the partitions and their logs, the NATS
/// server, and this gateway's traffic.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The dbnodes, by id.
    pub nodes: Vec<NodeView>,
    /// The partitions: which nodes hold them, and their logs.
    pub partitions: Vec<PartitionView>,
    /// The NATS server this gateway is connected to (absent without NATS).
    pub nats: Option<crate::logs::NatsView>,
    /// This gateway's HTTP requests since it started, by route and method.
    pub traffic: Vec<crate::metrics::RouteTraffic>,
    /// The upper bounds (ms) of the latency buckets in `traffic`.
    pub latency_buckets_ms: Vec<f64>,
    /// Change feeds open on this gateway.
    pub change_feeds: u64,
}

/// One partition in [`ClusterView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// The partition.
    pub partition: protocol::PartitionId,
    /// Its primary's node.
    #[schema(value_type = String, example = "db-0")]
    pub primary: protocol::NodeId,
    /// Its replica's node (none in a one-node ring).
    #[schema(value_type = Option<String>, example = "db-1")]
    pub replica: Option<protocol::NodeId>,
    /// Its log, when it could be read.
    pub log: Option<crate::logs::LogView>,
}

/// One dbnode in [`ClusterView`].
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// `db-{i}`.
    #[schema(value_type = String, example = "db-0")]
    pub node: protocol::NodeId,
    /// Its life-cycle state.
    pub state: protocol::NodeState,
    /// Heard from within 3 s and ready.
    pub live: bool,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Hosted partitions.
    pub partitions: Vec<protocol::PresencePartition>,
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerKeys),
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
        routes::changes,
        routes::cluster,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi,
    ),
    components(schemas(
        User,
        NewUser,
        UserPatch,
        UserUpdate,
        Problem,
        FieldError,
        ClusterView,
        crate::feed::Change,
        crate::feed::EndReason,
        Page,
        routes::Count
    ))
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str) -> serde_json::Value {
        let doc = serde_json::to_value(document()).unwrap();
        doc["components"]["schemas"][name].clone()
    }

    #[test]
    fn the_document_states_the_record_rules() {
        use protocol::user::*;
        let user = schema("User");
        let id = &user["properties"]["id"];
        assert_eq!(id["maxLength"], MAX_ID_BYTES);
        assert_eq!(id["pattern"], ID_PATTERN);
        assert_eq!(user["properties"]["name"]["maxLength"], MAX_NAME_CHARS);
        assert_eq!(user["properties"]["email"]["pattern"], EMAIL_PATTERN);
        assert_eq!(user["properties"]["group"]["maximum"], MAX_GROUP);
        assert_eq!(user["additionalProperties"], false);
        let required = schema("NewUser")["required"].clone();
        assert_eq!(required, serde_json::json!(["name", "email", "group"]));
        assert!(schema("UserPatch").get("required").is_none());
    }

    #[test]
    fn headers_and_refusals_are_declared() {
        let doc = serde_json::to_value(document()).unwrap();
        let patch = &doc["paths"]["/api/user/{id}"]["patch"];
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "If-Match", "Idempotency-Key"]);
        for status in [
            "200", "400", "404", "409", "412", "413", "415", "422", "500", "503", "504", "507",
        ] {
            assert!(patch["responses"].get(status).is_some(), "{status}");
        }
    }
}
