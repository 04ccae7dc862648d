//! ringstore gateway: the REST API (docs/design.md) over NATS request/reply.
//!
//! Routes: `GET/PUT/PATCH/DELETE /api/user/{id}`, `POST/PUT /api/user` (and `/api/user/`),
//! `GET /api/users` (LIST, cursor pagination), `GET /api/users/count`,
//! `GET /api/cluster`, `/health`, `/ready`, `/metrics`, `/openapi.json`. Each request goes to
//! `ringstore.part.{p}.{primary|replica}.{op}` for the record's partition, failing over to the
//! other copy; node pings (`ringstore.node.{node}.ping`) steer around silent nodes.

pub mod auth;
mod config;
pub mod connection;
pub mod disconnects;
mod error;
mod extract;
pub mod feed;
pub mod idempotency;
mod limit;
pub mod list;
pub mod logs;
pub mod memory;
mod metrics;
mod nats_store;
mod openapi;
pub mod presence;
mod routes;
mod server;
mod state;
mod status;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
pub use config::{Config, ReadFrom};
pub use error::ApiError;
pub use limit::App;
pub use metrics::Metrics;
use protocol::PartitionMap;
pub use state::AppState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::disconnects::Disconnects;
use crate::nats_store::NatsStore;
use crate::presence::PresenceTable;

/// The HTTP application over `state`, behind the request-concurrency limit ([`App`]).
pub fn app(state: AppState) -> App {
    // One allocation shared by every request: axum clones the state for each extractor.
    let state = Arc::new(state);
    // The writes, which read a body: one sent slowly would hold its slot for as long as the
    // client likes, so a write that takes longer than MAX_REQUEST_MS in all is answered 408.
    // Idempotency keys apply to writes too, once routed (an unknown method is 405, whatever
    // its headers). Reads pay for neither.
    let keyed = axum::middleware::from_fn_with_state(state.keys.clone(), idempotency::idempotent);
    let slow_body = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::RequestTimeout
        }))
        .timeout(state.max_request);
    let user_root = post(routes::users::create_user)
        .put(routes::users::update_user)
        .route_layer(keyed.clone())
        .route_layer(slow_body.clone());
    let user_one = put(routes::users::put_user)
        .patch(routes::users::patch_user)
        .delete(routes::users::delete_user)
        .route_layer(keyed)
        .route_layer(slow_body);
    let router = Router::new()
        .route("/api/user", user_root.clone())
        .route("/api/user/", user_root)
        .route(
            "/api/user/{id}",
            get(routes::users::get_user).merge(user_one),
        )
        .route("/api/users", get(routes::users::list_users))
        .route("/api/users/count", get(routes::users::count_users))
        .route("/api/cluster", get(routes::ops::cluster))
        .route("/health", get(routes::ops::health))
        .route("/ready", get(routes::ops::ready))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/api/users/changes", get(routes::changes::changes))
        .route("/status", get(crate::status::page))
        .route("/status/app.js", get(crate::status::script))
        .route("/status/style.css", get(crate::status::style))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // Without API_KEYS_FILE every caller is the same anonymous one: no layer at all.
    let router = match &state.api_keys {
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            crate::auth::authenticate,
        )),
        None => router,
    };
    let (max_concurrent, metrics) = (state.max_concurrent, state.metrics.clone());
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(crate::extract::MAX_BODY))
        .with_state(state);
    App::new(router, max_concurrent, metrics)
}

/// Connects to NATS, retrying in the background until a server is reachable.
async fn connect(config: &Config, disconnects: Disconnects) -> anyhow::Result<async_nats::Client> {
    let options = config
        .nats
        .options("ringstore-gateway")
        .retry_on_initial_connect()
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Disconnected) {
                disconnects.note();
            }
            async move { info!(%event, "nats") }
        });
    config
        .nats
        .connect(options)
        .await
        .map_err(|e| anyhow::anyhow!("NATS: {e}"))
}

/// The API keys of `API_KEYS_FILE`; `None` (and a loud warning) without one.
fn api_keys(config: &Config) -> anyhow::Result<Option<Arc<auth::ApiKeys>>> {
    let Some(path) = &config.api_keys_file else {
        warn!(
            "API_KEYS_FILE is not set: the REST API is open to anyone who can reach it \
             (local development only)"
        );
        return Ok(None);
    };
    let keys = auth::ApiKeys::load(path)?;
    info!(path = %path.display(), "REST authentication on");
    Ok(Some(Arc::new(keys)))
}

/// What the handlers share, over `client`: the partition calls, the key store, the logs.
fn state(
    config: &Config,
    client: &async_nats::Client,
    disconnects: &Disconnects,
    presence: Arc<PresenceTable>,
    api_keys: Option<Arc<auth::ApiKeys>>,
    map: Arc<PartitionMap>,
    shutdown: &CancellationToken,
) -> AppState {
    let timeout = config.request_timeout();
    let metrics = Arc::new(Metrics::default());
    let logs = logs::Logs::new(
        client.clone(),
        map.clone(),
        timeout,
        config.feed_limits(),
        shutdown.clone(),
    );
    let store = NatsStore::new(
        client.clone(),
        map,
        timeout,
        config.read_from,
        presence.clone(),
        metrics.clone(),
        disconnects.clone(),
    );
    let keys = idempotency::Retrying::new(
        idempotency::NatsKeys::new(client.clone(), timeout),
        timeout,
        disconnects.clone(),
    );
    AppState {
        store: Arc::new(store),
        metrics,
        presence,
        keys: idempotency::Keys {
            store: Arc::new(keys),
            abandoned_after: 2 * timeout + Duration::from_secs(1),
        },
        max_concurrent: config.max_concurrent_requests,
        max_request: config.max_request(),
        api_keys,
        logs: Some(Arc::new(logs)),
    }
}

/// Serves the REST API until `shutdown`, then stops accepting, finishes in-flight requests
/// and drains NATS, all within `SHUTDOWN_TIMEOUT_MS`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    info!(url = config.nats.url, "connecting to NATS");
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let api_keys = api_keys(&config)?;
    let disconnects = Disconnects::default();
    let client = connect(&config, disconnects.clone()).await?;
    let presence = Arc::new(PresenceTable::default());
    info!("reading the partition map");
    let Some(map) = runtime::map::wait(&client, None, &shutdown).await? else {
        return Ok(());
    };
    info!(
        partitions = map.count(),
        nodes = map.nodes().len(),
        epoch = map.epoch,
        "partition map read"
    );
    let map = Arc::new(map);
    let follower = tokio::spawn(presence.clone().follow(
        client.clone(),
        map.clone(),
        shutdown.clone(),
    ));
    let state = state(
        &config,
        &client,
        &disconnects,
        presence,
        api_keys,
        map,
        &shutdown,
    );
    let metrics = state.metrics.clone();
    let addr = SocketAddr::from(([0, 0, 0, 0], config.rest_port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    info!(%addr, read_from = ?config.read_from, "serving {scheme}");
    let limits = config.server_limits();
    let deadline =
        server::serve(listener, app(state), metrics, limits, tls, shutdown.clone()).await;
    info!("shutting down");
    shutdown.cancel();
    // The rest of the shutdown is bounded by the same deadline, whatever NATS does: with NATS
    // down, a drain would wait for it for ever.
    match tokio::time::timeout_at(deadline, follower).await {
        Ok(joined) => joined?,
        Err(_) => warn!("the presence follower did not stop by SHUTDOWN_TIMEOUT_MS"),
    }
    match tokio::time::timeout_at(deadline, client.drain()).await {
        Ok(drained) => drained?,
        Err(_) => warn!(
            "the NATS connection did not drain by SHUTDOWN_TIMEOUT_MS ({:?}); exiting anyway",
            limits.shutdown_timeout
        ),
    }
    Ok(())
}
