//! The OpenAPI document (`GET /openapi.json`), generated from the handlers' annotations and
//! the typed model of [`protocol::user`] and [`protocol::params`]: every constraint the server
//! enforces comes from the code that enforces it. A leaf: nothing imports it. Each handler's
//! annotation says what it answers on success; what each operation can refuse, and the
//! headers it reads, are one table here ([`operations`]), added to the document by
//! [`Refusals`].

use axum::Json;
use protocol::{FieldError, NewUser, User, UserPatch, UserUpdate};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, Required};
use utoipa::OpenApi;

use crate::error::Problem;
use crate::idempotency::MAX_KEY_LEN;
use crate::list::Page;
use crate::routes::{changes, ops, users};

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

fn last_event_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(r"^[0-9a-f]{8}(\.[0-9]{1,20}){1,64}$"))
        .examples([serde_json::json!("5e2a90c1.17.4.22")])
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

/// A refusal an operation can answer (always `application/problem+json`).
struct Refusal {
    status: u16,
    description: &'static str,
    /// A header it carries: name and description.
    header: Option<(&'static str, &'static str)>,
}

const INVALID: Refusal = Refusal {
    status: 400,
    description: "A malformed id, body, parameter or header: what is wrong, with every \
        offending field in `errors`",
    header: None,
};
const UNAUTHENTICATED: Refusal = Refusal {
    status: 401,
    description: "No `Authorization: Bearer` key, or one the gateway does not know",
    header: Some((
        "WWW-Authenticate",
        "`Bearer realm=\"ringstore\"`, with `error=\"invalid_token\"` for an unknown key",
    )),
};
const FORBIDDEN: Refusal = Refusal {
    status: 403,
    description: "The key lacks the scope the call needs (`read`, `write` or `admin`)",
    header: None,
};
const NOT_FOUND: Refusal = Refusal {
    status: 404,
    description: "No user with this id",
    header: None,
};
const TOO_SLOW: Refusal = Refusal {
    status: 408,
    description: "The write, body upload included, took longer than `MAX_REQUEST_MS`",
    header: None,
};
const CONFLICT: Refusal = Refusal {
    status: 409,
    description: "The first request with this `Idempotency-Key` is still in progress (or, on \
        create, a user with this id exists)",
    header: Some(("Retry-After", "Seconds to wait, when the key is in use")),
};
const PRECONDITION_FAILED: Refusal = Refusal {
    status: 412,
    description: "The record's version is not one `If-Match` names",
    header: None,
};
const TOO_LARGE: Refusal = Refusal {
    status: 413,
    description: "The body is larger than 64 KiB",
    header: None,
};
const NOT_JSON: Refusal = Refusal {
    status: 415,
    description: "The body is not `application/json` (or another `+json` type)",
    header: None,
};
const KEY_REUSED: Refusal = Refusal {
    status: 422,
    description: "This `Idempotency-Key` was used for a different request",
    header: None,
};
const INTERNAL: Refusal = Refusal {
    status: 500,
    description: "A dbnode failed (a bug or a storage failure); the logs say more",
    header: None,
};
const UNAVAILABLE: Refusal = Refusal {
    status: 503,
    description: "No dbnode serves the partition, or the gateway is at \
        `MAX_CONCURRENT_REQUESTS`",
    header: Some(("Retry-After", "Seconds to wait before retrying")),
};
const TIMEOUT: Refusal = Refusal {
    status: 504,
    description: "No dbnode answered within `REQUEST_TIMEOUT_MS`; a write may or may not have \
        been applied (retry it with the same `Idempotency-Key`)",
    header: None,
};
const KEYS_FULL: Refusal = Refusal {
    status: 507,
    description: "The store of `Idempotency-Key`s is full (`IDEMPOTENCY_KEY_MAX_BYTES`) until \
        older keys expire: nothing was done",
    header: None,
};

/// Refusals of a call without a valid API key (when the gateway has `API_KEYS_FILE`).
const AUTH: &[&Refusal] = &[&UNAUTHENTICATED, &FORBIDDEN];
/// Refusals of a call that needs a dbnode.
const NEEDS_NODE: &[&Refusal] = &[&UNAVAILABLE, &TIMEOUT, &INTERNAL];
/// Refusals of a request body.
const BODY: &[&Refusal] = &[&TOO_LARGE, &NOT_JSON, &TOO_SLOW];
/// Refusals of a write that carries an `Idempotency-Key`.
const KEYED: &[&Refusal] = &[&CONFLICT, &KEY_REUSED, &KEYS_FULL];

/// A request header an operation reads.
#[derive(Clone, Copy)]
enum Header {
    IfMatch,
    IdempotencyKey,
    LastEventId,
}

impl Header {
    fn parameter(self) -> utoipa::openapi::path::Parameter {
        let (name, description, schema) = match self {
            Header::IfMatch => (
                "If-Match",
                "Apply only if the record's `ETag` is one of these (strong comparison: `W/` tags \
                 never match; a bare number `7` means `\"7\"`); `*` or absent: unconditionally.",
                if_match(),
            ),
            Header::IdempotencyKey => (
                "Idempotency-Key",
                "1-255 visible ASCII characters (draft-ietf-httpapi-idempotency-key-header-07). A \
                 retry with the same key and the same request (method, target, body) returns the \
                 first response, marked `Idempotent-Replayed: true`, and applies nothing; the key \
                 on another request is 422; while the first request is in progress, 409. Keys are \
                 remembered for 24 hours (`IDEMPOTENCY_KEY_TTL_SECS`).",
                idempotency_key(),
            ),
            Header::LastEventId => (
                "Last-Event-ID",
                "The `id` of the last event received: continue right after it (takes precedence \
                 over `since`).",
                last_event_id(),
            ),
        };
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build()
    }
}

/// What the operation `method path` can refuse, and the headers it reads.
fn operations(method: &HttpMethod, path: &str) -> (Vec<&'static Refusal>, Vec<Header>) {
    use Header::*;
    use HttpMethod::{Delete, Get, Patch, Post, Put};
    let all = |groups: &[&[&'static Refusal]]| groups.concat();
    match (method, path) {
        (Get, "/api/user/{id}") => (all(&[&[&INVALID, &NOT_FOUND], AUTH, NEEDS_NODE]), vec![]),
        (Post, "/api/user") => (
            all(&[&[&INVALID], AUTH, BODY, KEYED, NEEDS_NODE]),
            vec![IdempotencyKey],
        ),
        (Put, "/api/user") | (Patch | Put, "/api/user/{id}") => (
            all(&[
                &[&INVALID, &NOT_FOUND, &PRECONDITION_FAILED],
                AUTH,
                BODY,
                KEYED,
                NEEDS_NODE,
            ]),
            vec![IfMatch, IdempotencyKey],
        ),
        (Delete, "/api/user/{id}") => (
            all(&[
                &[&INVALID, &NOT_FOUND, &PRECONDITION_FAILED],
                AUTH,
                KEYED,
                NEEDS_NODE,
            ]),
            vec![IfMatch, IdempotencyKey],
        ),
        (Get, "/api/users" | "/api/users/count") => (all(&[&[&INVALID], AUTH, NEEDS_NODE]), vec![]),
        (Get, "/api/users/changes") => (all(&[&[&INVALID], AUTH, NEEDS_NODE]), vec![LastEventId]),
        (Get, "/api/cluster" | "/metrics") => (AUTH.to_vec(), vec![]),
        _ => (vec![], vec![]),
    }
}

/// Adds [`operations`]' refusals and headers, and the `{id}` path parameter, to every
/// operation of the document.
struct Refusals;

impl Refusals {
    fn add(path: &str, method: HttpMethod, operation: &mut Operation) {
        let (refusals, headers) = operations(&method, path);
        let parameters = operation.parameters.get_or_insert_with(Vec::new);
        if path.contains("{id}") {
            let id = ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The user id, percent-encoded as one path segment."))
                .schema(Some(protocol::user::schema::id()))
                .build();
            parameters.insert(0, id);
        }
        parameters.extend(headers.into_iter().map(Header::parameter));
        for refusal in refusals {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let mut response = ResponseBuilder::new()
                .description(refusal.description)
                .content("application/problem+json", content);
            if let Some((name, description)) = refusal.header {
                let schema = ObjectBuilder::new().schema_type(SchemaType::Type(Type::String));
                let header = HeaderBuilder::new()
                    .schema(schema)
                    .description(Some(description))
                    .build();
                response = response.header(name, header);
            }
            operation
                .responses
                .responses
                .insert(refusal.status.to_string(), response.build().into());
        }
    }
}

impl utoipa::Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let methods = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Patch, &mut item.patch),
                (HttpMethod::Delete, &mut item.delete),
            ];
            for (method, operation) in methods {
                if let Some(operation) = operation {
                    Refusals::add(path, method, operation);
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerKeys, &Refusals),
    info(
        title = "ringstore",
        description = "Partitioned, replicated user store on NATS. Errors are application/problem+json (RFC 9457). `POST` and `PUT` also answer on `/api/user/`."
    ),
    paths(
        users::get_user,
        users::create_user,
        users::update_user,
        users::patch_user,
        users::put_user,
        users::delete_user,
        users::list_users,
        users::count_users,
        changes::changes,
        ops::cluster,
        ops::health,
        ops::ready,
        ops::metrics,
        serve,
    ),
    components(schemas(
        User,
        NewUser,
        UserPatch,
        UserUpdate,
        Problem,
        FieldError,
        ops::ClusterView,
        crate::feed::Change,
        crate::feed::EndReason,
        Page,
        users::Count
    ))
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
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
