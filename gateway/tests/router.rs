//! Router tests: every status code of the REST API (README, docs/design.md) against an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use gateway::idempotency::MemoryKeys;
use gateway::memory::MemoryStore;
use gateway::presence::PresenceTable;
use gateway::store::TransportError;
use gateway::{app, AppState, Metrics};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The router tests' `MAX_CONCURRENT_REQUESTS`.
const MAX_CONCURRENT: usize = 4;

struct Api {
    store: Arc<MemoryStore>,
    keys: Arc<MemoryKeys>,
    router: gateway::App,
}

impl Api {
    fn new() -> Self {
        Self::with_api_keys(None)
    }

    /// A router that wants API keys (the keys-file text).
    fn authenticated(keys_file: &str) -> Self {
        let keys = gateway::auth::ApiKeys::parse(keys_file).unwrap();
        Self::with_api_keys(Some(Arc::new(keys)))
    }

    fn with_api_keys(api_keys: Option<Arc<gateway::auth::ApiKeys>>) -> Self {
        let store = Arc::new(MemoryStore::default());
        let keys = Arc::new(MemoryKeys::default());
        let state = AppState {
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            presence: Arc::new(PresenceTable::default()),
            keys: gateway::idempotency::Keys {
                store: keys.clone(),
                abandoned_after: Duration::from_secs(5),
            },
            max_concurrent: MAX_CONCURRENT,
            max_request: Duration::from_secs(30),
            api_keys,
            logs: None,
        };
        Self {
            store,
            keys,
            router: app(state),
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Response<()>, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (parts.status, Response::from_parts(parts, ()), value)
    }

    async fn json(
        &self,
        method: Method,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Response<()>, Value) {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn call(&self, method: Method, uri: &str) -> (StatusCode, Response<()>, Value) {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }
}

fn ann() -> Value {
    json!({"id": "ann", "name": "Ann", "email": "ann@example.com", "group": 1})
}

fn etag(response: &Response<()>) -> String {
    response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned()
}

fn assert_problem(status: StatusCode, response: &Response<()>, body: &Value, expected: u16) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(body["status"], expected);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
}

#[tokio::test]
async fn create_returns_201_with_location_and_etag() {
    let api = Api::new();
    let (status, response, body) = api.json(Method::POST, "/api/user", ann()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, ann());
    assert_eq!(response.headers()[header::LOCATION], "/api/user/ann");
    assert_eq!(etag(&response), "\"1\"");
}

#[tokio::test]
async fn create_without_id_generates_a_uuid_and_trailing_slash_works() {
    let api = Api::new();
    let body = json!({"name": "Bo", "email": "bo@example.com", "group": 0});
    let (status, _, created) = api.json(Method::POST, "/api/user/", body).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn duplicate_create_is_409() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    let (status, response, body) = api.json(Method::POST, "/api/user", ann()).await;
    assert_problem(status, &response, &body, 409);
}

#[tokio::test]
async fn get_returns_the_record_or_404() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    let (status, response, body) = api.call(Method::GET, "/api/user/ann").await;
    assert_eq!((status, body), (StatusCode::OK, ann()));
    assert_eq!(etag(&response), "\"1\"");
    let (status, response, body) = api.call(Method::GET, "/api/user/nobody").await;
    assert_problem(status, &response, &body, 404);
}

#[tokio::test]
async fn hostile_ids_round_trip_through_the_path() {
    let api = Api::new();
    for (id, path) in [
        ("a b", "a%20b"),
        ("üñí€", "%C3%BC%C3%B1%C3%AD%E2%82%AC"),
        ("a.b", "a.b"),
    ] {
        let user = json!({"id": id, "name": "X", "email": "x@example.com", "group": 2});
        let (status, response, _) = api.json(Method::POST, "/api/user", user.clone()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            response.headers()[header::LOCATION],
            format!("/api/user/{path}").as_str()
        );
        let (status, _, body) = api.call(Method::GET, &format!("/api/user/{path}")).await;
        assert_eq!((status, body), (StatusCode::OK, user));
    }
}

#[tokio::test]
async fn partial_updates_change_only_given_fields() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    let (status, _, body) = api
        .json(Method::PUT, "/api/user", json!({"id": "ann", "group": 7}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"id": "ann", "name": "Ann", "email": "ann@example.com", "group": 7})
    );
    let (_, _, body) = api
        .json(Method::PUT, "/api/user/", json!({"id": "ann", "name": "A"}))
        .await;
    assert_eq!(body["name"], "A");
    let (_, _, body) = api
        .json(Method::PATCH, "/api/user/ann", json!({"email": "a@b.co"}))
        .await;
    assert_eq!(
        body,
        json!({"id": "ann", "name": "A", "email": "a@b.co", "group": 7})
    );
    let (status, response, body) = api
        .json(Method::PUT, "/api/user/ann", json!({"group": 3}))
        .await;
    assert_eq!((status, body["group"].clone()), (StatusCode::OK, json!(3)));
    assert_eq!(etag(&response), "\"5\"");
}

#[tokio::test]
async fn update_of_a_missing_record_is_404() {
    let api = Api::new();
    let (status, response, body) = api
        .json(Method::PUT, "/api/user", json!({"id": "x", "group": 1}))
        .await;
    assert_problem(status, &response, &body, 404);
}

#[tokio::test]
async fn if_match_makes_writes_conditional() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    let conditional = |method: Method, tag: &str| {
        Request::builder()
            .method(method)
            .uri("/api/user/ann")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::IF_MATCH, tag)
            .body(Body::from(json!({"group": 9}).to_string()))
            .unwrap()
    };
    let (status, response, body) = api.send(conditional(Method::PATCH, "\"7\"")).await;
    assert_problem(status, &response, &body, 412);
    // Strong comparison: a weak tag never matches.
    let (status, response, body) = api.send(conditional(Method::PATCH, "W/\"1\"")).await;
    assert_problem(status, &response, &body, 412);
    // Not an entity-tag list at all.
    for garbage in ["garbage", "1x", "\"1\",", "null"] {
        let (status, response, body) = api.send(conditional(Method::PATCH, garbage)).await;
        assert_problem(status, &response, &body, 400);
        assert_eq!(body["errors"][0]["field"], "If-Match", "{garbage}");
    }
    // A bare number is a version, as before entity-tags were parsed.
    let (status, response, body) = api.send(conditional(Method::PATCH, "7")).await;
    assert_problem(status, &response, &body, 412);
    // Any tag of a list may match.
    let (status, response, _) = api
        .send(conditional(Method::PATCH, "\"7\", W/\"x\", \"1\""))
        .await;
    assert_eq!(
        (status, etag(&response)),
        (StatusCode::OK, "\"2\"".to_owned())
    );
    let (status, response, body) = api.send(conditional(Method::DELETE, "\"1\"")).await;
    assert_problem(status, &response, &body, 412);
    let (status, _, _) = api.send(conditional(Method::DELETE, "\"2\"")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn delete_is_204_then_404() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    assert_eq!(
        api.call(Method::DELETE, "/api/user/ann").await.0,
        StatusCode::NO_CONTENT
    );
    let (status, response, body) = api.call(Method::DELETE, "/api/user/ann").await;
    assert_problem(status, &response, &body, 404);
    assert_eq!(
        api.call(Method::GET, "/api/user/ann").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn validation_errors_name_every_offending_field() {
    let api = Api::new();
    let bad = json!({"id": "", "name": "", "email": "nope", "group": 2147483648u64});
    let (status, response, body) = api.json(Method::POST, "/api/user", bad).await;
    assert_problem(status, &response, &body, 400);
    let mut fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["email", "group", "id", "name"]);
}

#[tokio::test]
async fn bodies_of_the_wrong_shape_name_the_field() {
    let api = Api::new();
    let user = |extra: Value| {
        let mut body = json!({"name": "Ann", "email": "ann@example.com", "group": 1});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (body, field, says) in [
        (user(json!({"group": -1})), "group", "must be an integer"),
        (user(json!({"group": "1"})), "group", "invalid type"),
        (user(json!({"name": null})), "name", "invalid type"),
        (user(json!({"age": 3})), "age", "unknown field `age`"),
        (json!(["Ann", "ann@example.com", 1]), "", "JSON object"),
    ] {
        let (status, response, problem) = api.json(Method::POST, "/api/user", body.clone()).await;
        assert_problem(status, &response, &problem, 400);
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    api.json(Method::POST, "/api/user", ann()).await;
    // A merge patch's null would remove a field; every field of a user is required.
    let (status, response, problem) = api
        .json(Method::PATCH, "/api/user/ann", json!({"email": null}))
        .await;
    assert_problem(status, &response, &problem, 400);
    assert_eq!(problem["errors"][0]["field"], "email");
}

#[tokio::test]
async fn patch_may_not_change_the_id() {
    let api = Api::new();
    api.json(Method::POST, "/api/user", ann()).await;
    let (status, response, body) = api
        .json(Method::PATCH, "/api/user/ann", json!({"id": "bob"}))
        .await;
    assert_problem(status, &response, &body, 400);
    assert_eq!(body["errors"][0]["field"], "id");
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_content_type_is_415() {
    let api = Api::new();
    let request = |ct: &str, body: &str| {
        Request::post("/api/user")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let (status, response, body) = api.send(request("application/json", "{\"id\": ")).await;
    assert_problem(status, &response, &body, 400);
    let (status, response, body) = api.send(request("application/json", "[1, 2]")).await;
    assert_problem(status, &response, &body, 400);
    let (status, response, body) = api.send(request("text/plain", &ann().to_string())).await;
    assert_problem(status, &response, &body, 415);
    let no_type = Request::post("/api/user")
        .body(Body::from(ann().to_string()))
        .unwrap();
    let (status, response, body) = api.send(no_type).await;
    assert_problem(status, &response, &body, 415);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let api = Api::new();
    let big = json!({"id": "x", "name": "n".repeat(70_000), "email": "a@b.co", "group": 1});
    let (status, response, body) = api.json(Method::POST, "/api/user", big).await;
    assert_problem(status, &response, &body, 413);
}

#[tokio::test]
async fn no_responders_is_503_with_retry_after_and_timeout_is_504() {
    let api = Api::new();
    api.store.fail_with(Some(TransportError::NoResponders));
    let (status, response, body) = api.call(Method::GET, "/api/user/ann").await;
    assert_problem(status, &response, &body, 503);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let (status, response, body) = api.json(Method::POST, "/api/user", ann()).await;
    assert_problem(status, &response, &body, 503);
    assert_eq!(
        api.call(Method::GET, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    api.store.fail_with(Some(TransportError::TimedOut));
    let (status, response, body) = api.call(Method::DELETE, "/api/user/ann").await;
    assert_problem(status, &response, &body, 504);

    api.store.fail_with(None);
    assert_eq!(api.call(Method::GET, "/ready").await.0, StatusCode::OK);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_outcome() {
    let api = Api::new();
    let request = |key: &str| {
        Request::post("/api/user")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(ann().to_string()))
            .unwrap()
    };
    let (first, r1, _) = api.send(request("k1")).await;
    let (again, r2, body) = api.send(request("k1")).await;
    assert_eq!((first, again), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(etag(&r1), etag(&r2));
    assert_eq!(body, ann(), "the first response's body");
    assert!(r1.headers().get("idempotent-replayed").is_none());
    assert_eq!(r2.headers()["idempotent-replayed"], "true");
    assert_eq!(
        r2.headers()[header::LOCATION],
        r1.headers()[header::LOCATION]
    );
    let (other, response, body) = api.send(request("k2")).await;
    assert_eq!(other, StatusCode::CONFLICT);
    assert_problem(other, &response, &body, 409);
    let (status, response, body) = api.send(request("bad key")).await;
    assert_problem(status, &response, &body, 400);
}

/// A request with `key`: `method` on `uri` with `body` (none if null).
fn keyed(method: Method, uri: &str, key: &str, body: Value) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("Idempotency-Key", key);
    match body {
        Value::Null => builder.body(Body::empty()).unwrap(),
        body => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
    }
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_422_and_changes_nothing() {
    let api = Api::new();
    let (created, _, _) = api
        .send(keyed(Method::POST, "/api/user", "k1", ann()))
        .await;
    assert_eq!(created, StatusCode::CREATED);
    // The original design's failure: a DELETE with a used key answered 204, record kept.
    let (status, response, body) = api
        .send(keyed(Method::DELETE, "/api/user/ann", "k1", Value::Null))
        .await;
    assert_problem(status, &response, &body, 422);
    assert!(
        body["detail"].as_str().unwrap().contains("\"k1\""),
        "{body}"
    );
    assert_eq!(
        body["type"],
        "https://ringstore.dev/problems/idempotency-key-reused"
    );
    assert_eq!(
        api.call(Method::GET, "/api/user/ann").await.0,
        StatusCode::OK
    );
    // Another record, another body: still another request.
    let bob = json!({"id": "bob", "name": "Bob", "email": "bob@example.com", "group": 1});
    let (status, response, body) = api.send(keyed(Method::POST, "/api/user", "k1", bob)).await;
    assert_problem(status, &response, &body, 422);
    assert_eq!(
        api.call(Method::GET, "/api/user/bob").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_create_without_an_id_retried_with_its_key_creates_one_record() {
    let api = Api::new();
    let anon = json!({"name": "Anon", "email": "anon@example.com", "group": 2});
    let (_, first, a) = api
        .send(keyed(Method::POST, "/api/user", "anon", anon.clone()))
        .await;
    // The stored response is lost (as if the first gateway died before storing it): the key is
    // pending and abandoned, the retry performs the request again with the same request id.
    api.keys.make_pending(Duration::from_secs(60));
    let (status, second, b) = api
        .send(keyed(Method::POST, "/api/user", "anon", anon))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        second.headers().get("idempotent-replayed").is_none(),
        "performed again"
    );
    assert_eq!(a["id"], b["id"], "the same generated id");
    assert_eq!(etag(&first), etag(&second), "applied once");
}

#[tokio::test]
async fn a_key_whose_first_request_is_in_progress_is_409_with_retry_after() {
    let api = Api::new();
    api.send(keyed(Method::POST, "/api/user", "busy", ann()))
        .await;
    api.keys.make_pending(Duration::ZERO);
    let (status, response, body) = api
        .send(keyed(Method::POST, "/api/user", "busy", ann()))
        .await;
    assert_problem(status, &response, &body, 409);
    assert_eq!(
        body["type"],
        "https://ringstore.dev/problems/idempotency-key-in-use"
    );
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn a_write_without_a_definite_outcome_leaves_its_key_free_for_the_retry() {
    let api = Api::new();
    api.store.fail_with(Some(TransportError::TimedOut));
    let (status, _, _) = api.send(keyed(Method::POST, "/api/user", "k", ann())).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    api.store.fail_with(None);
    let (status, response, _) = api.send(keyed(Method::POST, "/api/user", "k", ann())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let api = Api::new();
    let (status, response, body) = api.call(Method::GET, "/api/nothing").await;
    assert_problem(status, &response, &body, 404);
    let (status, response, body) = api.call(Method::DELETE, "/api/user").await;
    assert_problem(status, &response, &body, 405);
}

#[tokio::test]
async fn operations_endpoints() {
    let api = Api::new();
    assert_eq!(api.call(Method::GET, "/health").await.0, StatusCode::OK);
    api.call(Method::GET, "/api/user/x").await;
    let (status, _, text) = api.call(Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(
            r#"ringstore_http_requests_total{method="GET",route="/api/user/{id}",status="404"} 1"#
        ),
        "{text}"
    );
    let (status, _, doc) = api.call(Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/user",
        "/api/user/{id}",
        "/api/users/changes",
        "/api/cluster",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from OpenAPI");
    }
    for method in ["get", "put", "patch", "delete"] {
        assert!(paths["/api/user/{id}"][method].is_object(), "{method}");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn change_feed_positions_and_filters_are_checked_before_anything_is_opened() {
    let api = Api::new();
    let last_event_id = |value: &str| {
        Request::builder()
            .uri("/api/users/changes")
            .header("Last-Event-ID", value)
            .body(Body::empty())
            .unwrap()
    };
    for (request, field) in [
        (last_event_id("garbage"), "Last-Event-ID"),
        (last_event_id("0000000a.1.-2"), "Last-Event-ID"),
        (last_event_id("0000000a"), "Last-Event-ID"),
        (get("/api/users/changes?since=yesterday"), "since"),
        (get("/api/users/changes?since=0000000g.1"), "since"),
        (get("/api/users/changes?group=2147483648"), "group"),
        (get("/api/users/changes?group=x"), "group"),
    ] {
        let (status, response, problem) = api.send(request).await;
        assert_problem(status, &response, &problem, 400);
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (status, response, problem) = api.call(Method::GET, "/api/users/changes?since=now").await;
    assert_problem(status, &response, &problem, 503);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_status_page_is_served_whole_under_a_strict_policy() {
    let api = Api::new();
    for (path, kind) in [
        ("/status", "text/html"),
        ("/status/app.js", "text/javascript"),
        ("/status/style.css", "text/css"),
    ] {
        let (status, response, _) = api.call(Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }
    let (_, _, page) = api.call(Method::GET, "/status").await;
    let page = page.as_str().unwrap();
    assert!(page.contains("/status/app.js") && page.contains("/status/style.css"));
}

#[tokio::test]
async fn list_walks_pages_in_id_order_and_counts() {
    let api = Api::new();
    for i in 0..7 {
        let user = json!({"id": format!("u{i}"), "name": "N", "email": "n@x.io", "group": i % 2});
        assert_eq!(
            api.json(Method::POST, "/api/user", user).await.0,
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut uri = "/api/users?limit=3".to_owned();
    loop {
        let (status, _, page) = api.call(Method::GET, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/users?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..7).map(|i| json!(format!("u{i}"))).collect::<Vec<_>>()
    );
    let (_, _, odd) = api.call(Method::GET, "/api/users?group=1").await;
    assert_eq!(odd["items"].as_array().unwrap().len(), 3);
    assert_eq!(odd["next_cursor"], Value::Null);
    assert_eq!(
        api.call(Method::GET, "/api/users/count").await.2,
        json!({"count": 7})
    );
    assert_eq!(
        api.call(Method::GET, "/api/users/count?group=0").await.2,
        json!({"count": 4})
    );
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let api = Api::new();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=",
        "cursor=a%2Fb",
        "cursor=%C2%85",
        "group=-1",
        "group=2147483648",
    ] {
        let (status, response, body) = api.call(Method::GET, &format!("/api/users?{query}")).await;
        assert_problem(status, &response, &body, 400);
        let field = query.split('=').next().unwrap();
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    let (status, response, body) = api.call(Method::GET, "/api/users/count?group=x").await;
    assert_problem(status, &response, &body, 400);
    // COUNT takes only `group`; LIST's paging parameters do not apply to it.
    let (status, _, body) = api
        .call(Method::GET, "/api/users/count?limit=0&cursor=x")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"count": 0})));
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let api = Api::new();
    for i in 0..50 {
        let method = Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let request = Request::builder()
            .method(method)
            .uri("/api/user/x")
            .body(Body::empty())
            .unwrap();
        let (status, _, _) = api.send(request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let (_, _, text) = api.call(Method::GET, "/metrics").await;
    let text = text.as_str().unwrap();
    assert!(!text.contains("MADEUP"), "a made-up method became a label");
    assert!(text.contains(
        r#"ringstore_http_requests_total{method="other",route="/api/user/{id}",status="405"} 50"#
    ));
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_shed_with_503() {
    let api = Api::new();
    api.store.delay_reads(Some(Duration::from_millis(300)));
    let calls = (0..3 * MAX_CONCURRENT).map(|_| api.call(Method::GET, "/api/user/x"));
    let answers = futures::future::join_all(calls).await;
    let shed: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let served = answers
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::NOT_FOUND)
        .count();
    assert_eq!(served, MAX_CONCURRENT, "as many served as the limit");
    assert_eq!(shed.len(), 2 * MAX_CONCURRENT, "the rest shed at once");
    for (status, response, body) in shed {
        assert_problem(*status, response, body, 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
    // Once they are done, requests are served again, and the refusals were counted.
    api.store.delay_reads(None);
    assert_eq!(
        api.call(Method::GET, "/api/user/x").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, _, text) = api.call(Method::GET, "/metrics").await;
    let text = text.as_str().unwrap();
    let shed_total = format!("ringstore_http_requests_shed_total {}", 2 * MAX_CONCURRENT);
    assert!(
        text.contains(&shed_total),
        "{shed_total} missing from:\n{text}"
    );
}

/// Sends `request` with `Authorization: Bearer {key}`.
fn bearer(key: &str, method: Method, uri: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

fn keys_file() -> String {
    use gateway::auth::hash;
    format!(
        "ops {} read,write,admin\nreader {} read\nwriter {} write\n",
        hash("ops-key"),
        hash("reader-key"),
        hash("writer-key")
    )
}

#[tokio::test]
async fn without_a_valid_key_the_api_is_401_with_a_bearer_challenge() {
    let api = Api::authenticated(&keys_file());
    let (status, response, body) = api.call(Method::GET, "/api/user/ann").await;
    assert_problem(status, &response, &body, 401);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"ringstore\""
    );
    let (status, response, body) = api
        .send(bearer("made-up", Method::GET, "/api/users", None))
        .await;
    assert_problem(status, &response, &body, 401);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"ringstore\", error=\"invalid_token\""
    );
    // A key's hash is not a key.
    let hashed = gateway::auth::hash("ops-key");
    let (status, _, _) = api
        .send(bearer(&hashed, Method::GET, "/api/users", None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for open in ["/health", "/openapi.json"] {
        assert_eq!(
            api.call(Method::GET, open).await.0,
            StatusCode::OK,
            "{open}"
        );
    }
}

#[tokio::test]
async fn each_call_needs_its_scope() {
    let api = Api::authenticated(&keys_file());
    let cases = [
        ("reader-key", Method::GET, "/api/users", StatusCode::OK),
        (
            "reader-key",
            Method::GET,
            "/api/user/nobody",
            StatusCode::NOT_FOUND,
        ),
        (
            "reader-key",
            Method::POST,
            "/api/user",
            StatusCode::FORBIDDEN,
        ),
        (
            "reader-key",
            Method::GET,
            "/api/cluster",
            StatusCode::FORBIDDEN,
        ),
        ("reader-key", Method::GET, "/metrics", StatusCode::FORBIDDEN),
        (
            "writer-key",
            Method::GET,
            "/api/users/count",
            StatusCode::FORBIDDEN,
        ),
        ("writer-key", Method::POST, "/api/user", StatusCode::CREATED),
        (
            "writer-key",
            Method::DELETE,
            "/api/user/ann",
            StatusCode::NO_CONTENT,
        ),
        ("ops-key", Method::GET, "/api/cluster", StatusCode::OK),
        ("ops-key", Method::GET, "/metrics", StatusCode::OK),
        // The feed is a read (503 here: the router tests have no logs to follow).
        (
            "writer-key",
            Method::GET,
            "/api/users/changes",
            StatusCode::FORBIDDEN,
        ),
        (
            "reader-key",
            Method::GET,
            "/api/users/changes",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        // The status page is open; the data it shows is not.
        ("nobody", Method::GET, "/status", StatusCode::OK),
    ];
    for (key, method, uri, expected) in cases {
        let body = (method == Method::POST).then(ann);
        let (status, response, problem) = api.send(bearer(key, method.clone(), uri, body)).await;
        assert_eq!(status, expected, "{key} {method} {uri}: {problem}");
        if status == StatusCode::FORBIDDEN {
            assert_problem(status, &response, &problem, 403);
        }
    }
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_caller() {
    let api = Api::authenticated(&keys_file());
    let create = |key: &str| {
        let mut request = bearer(
            key,
            Method::POST,
            "/api/user",
            Some(json!({"name": "Ann", "email": "ann@example.com", "group": 1})),
        );
        request
            .headers_mut()
            .insert("idempotency-key", "shared-key".parse().unwrap());
        request
    };
    let (status, first, mine) = api.send(create("writer-key")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // Another caller's use of the same key is its own request, not a replay of another's.
    let (status, theirs_response, theirs) = api.send(create("ops-key")).await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert!(theirs_response
        .headers()
        .get("idempotent-replayed")
        .is_none());
    assert_ne!(mine["id"], theirs["id"]);
    // The first caller's retry is still a replay of its own.
    let (status, again, replayed) = api.send(create("writer-key")).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, mine));
    assert_eq!(again.headers()["idempotent-replayed"], "true");
}
