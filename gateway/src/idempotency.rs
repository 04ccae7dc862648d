//! `Idempotency-Key` on writes, as draft-ietf-httpapi-idempotency-key-header-07 says: the
//! first request with a key is performed and its response stored with a *fingerprint* of the
//! request (method, target, body digest); a retry with the same key and fingerprint gets that
//! response again, marked `Idempotent-Replayed: true`, and applies nothing; the same key with
//! another fingerprint is 422; the same key while its first request is in progress is 409.
//!
//! Keys are global (one store for every gateway and partition) and live in the JetStream KV
//! bucket [`protocol::subjects::IDEMPOTENCY_BUCKET`], which forgets them by age (24 h by
//! default). A key whose first request never finished (its gateway died) is taken over after
//! [`AppState::keys_abandoned_after`]: the request id is the same, so the log still applies it
//! at most once. The log-level request ids that make the gateway's own retries exactly-once
//! are a separate mechanism ([`crate::extract::RequestId`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::error::ApiError;
use crate::routes::AppState;

/// The header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

/// The request id (and so the log-level identity) of a request made with an idempotency key,
/// set by [`idempotent`] for the handlers.
#[derive(Debug, Clone)]
pub struct KeyedRequest(pub String);

/// A response as stored with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// What a key remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// SHA-256 of the request the key was first used for.
    fingerprint: String,
    /// When its first request began (Unix ms).
    started: u64,
    /// Its response, once it has one.
    response: Option<StoredResponse>,
}

/// The idempotency-key store could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeyStoreError(pub String);

/// A key-value store with compare-and-set, as JetStream KV is.
pub trait KeyStore: Send + Sync + 'static {
    /// Stores `record` under `key` if the key is absent; its revision, or `None` if present.
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>>;
    /// The record under `key` and its revision.
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, KeyRecord)>, KeyStoreError>>;
    /// Replaces the record under `key` if it is still at `revision`; the new revision, or
    /// `None` if it moved.
    fn update<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>>;
    /// Forgets `key`.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>>;
}

/// What a request with a key may do.
enum Claim {
    /// Perform it; the key is ours at this revision.
    Owner(u64),
    /// Answer the stored response.
    Replay(StoredResponse),
    /// The first request is still in progress.
    InUse,
    /// The key belongs to another request.
    Reused,
}

async fn claim(
    store: &dyn KeyStore,
    key: &str,
    fingerprint: &str,
    abandoned_after: Duration,
) -> Result<Claim, KeyStoreError> {
    let now = protocol::timing::now_ms();
    let pending = KeyRecord {
        fingerprint: fingerprint.to_owned(),
        started: now,
        response: None,
    };
    for _ in 0..3 {
        if let Some(revision) = store.create(key, &pending).await? {
            return Ok(Claim::Owner(revision));
        }
        let Some((revision, found)) = store.get(key).await? else {
            continue; // expired or forgotten in between
        };
        if found.fingerprint != fingerprint {
            return Ok(Claim::Reused);
        }
        if let Some(response) = found.response {
            return Ok(Claim::Replay(response));
        }
        if now.saturating_sub(found.started) < abandoned_after.as_millis() as u64 {
            return Ok(Claim::InUse);
        }
        if let Some(revision) = store.update(key, &pending, revision).await? {
            return Ok(Claim::Owner(revision));
        }
    }
    Ok(Claim::InUse)
}

fn digest(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

/// A UUID v4 derived from `request_id`: the id a create without one gets, the same on every
/// retry of the request.
pub fn generated_id(request_id: &str) -> String {
    let bytes = Sha256::digest(request_id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&bytes[..16]);
    uuid::Builder::from_random_bytes(random)
        .into_uuid()
        .to_string()
}

/// Middleware on the write routes: answers, refuses or performs a request that carries an
/// `Idempotency-Key`, and stores the response of one it performed.
pub async fn idempotent(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Some(key) = request.headers().get("idempotency-key").filter(|_| writes) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return ApiError::BadRequest(
                "Idempotency-Key must be 1-255 visible ASCII characters".into(),
            )
            .into_response()
        }
    };
    let (mut parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, crate::extract::MAX_BODY).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let target = parts.uri.path_and_query().map_or("", |t| t.as_str());
    let fingerprint = digest(&[parts.method.as_str().as_bytes(), target.as_bytes(), &body]);
    let store_key = digest(&[key.as_bytes()]);
    let request_id = format!(
        "idem:{}",
        &digest(&[key.as_bytes(), fingerprint.as_bytes()])[..32]
    );
    parts.extensions.insert(KeyedRequest(request_id));

    let claimed = claim(
        &*state.keys,
        &store_key,
        &fingerprint,
        state.keys_abandoned_after,
    )
    .await;
    let revision = match claimed {
        Err(e) => return ApiError::KeysUnavailable(e.0).into_response(),
        Ok(Claim::Reused) => return ApiError::KeyReused(key).into_response(),
        Ok(Claim::InUse) => return ApiError::KeyInUse(key).into_response(),
        Ok(Claim::Replay(stored)) => return replay(stored),
        Ok(Claim::Owner(revision)) => revision,
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.status().is_server_error() {
        // No definite outcome: let a retry perform it again (same request id: at most once).
        if let Err(e) = state.keys.delete(&store_key).await {
            warn!(error = %e, "cannot release an idempotency key");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let done = KeyRecord {
        fingerprint,
        started: protocol::timing::now_ms(),
        response: Some(stored),
    };
    if let Err(e) = state.keys.update(&store_key, &done, revision).await {
        // A retry finds the key pending, then abandoned, and performs the request again under
        // the same request id: the log answers it with the first outcome.
        warn!(error = %e, "cannot store an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.clear();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Keys in memory, for router tests.
#[derive(Default)]
pub struct MemoryKeys {
    entries: std::sync::Mutex<std::collections::HashMap<String, (u64, KeyRecord)>>,
    revision: std::sync::atomic::AtomicU64,
}

impl MemoryKeys {
    /// Marks every key's first request as begun `age` ago and unfinished (a gateway that died
    /// mid-request, or one still working).
    pub fn make_pending(&self, age: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (_, record) in entries.values_mut() {
            record.response = None;
            record.started = protocol::timing::now_ms().saturating_sub(age.as_millis() as u64);
        }
    }

    fn next_revision(&self) -> u64 {
        self.revision
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }
}

impl KeyStore for MemoryKeys {
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let created = if entries.contains_key(key) {
            None
        } else {
            let revision = self.next_revision();
            entries.insert(key.to_owned(), (revision, record.clone()));
            Some(revision)
        };
        Box::pin(async move { Ok(created) })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, KeyRecord)>, KeyStoreError>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let found = entries.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let updated = match entries.get(key) {
            Some((current, _)) if *current == revision => {
                let revision = self.next_revision();
                entries.insert(key.to_owned(), (revision, record.clone()));
                Some(revision)
            }
            _ => None,
        };
        Box::pin(async move { Ok(updated) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Box::pin(async { Ok(()) })
    }
}

/// Keys in the JetStream KV bucket, opened on first use (the dbnodes create it).
pub struct NatsKeys {
    js: async_nats::jetstream::Context,
    bucket: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
}

impl NatsKeys {
    /// Keys over `client`, each operation under `timeout`.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Arc<Self> {
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(timeout);
        Arc::new(Self {
            js,
            bucket: tokio::sync::OnceCell::new(),
        })
    }

    async fn bucket(&self) -> Result<&async_nats::jetstream::kv::Store, KeyStoreError> {
        self.bucket
            .get_or_try_init(|| async {
                self.js
                    .get_key_value(protocol::subjects::IDEMPOTENCY_BUCKET)
                    .await
                    .map_err(|e| KeyStoreError(e.to_string()))
            })
            .await
    }
}

fn failed(e: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError(e.to_string())
}

impl KeyStore for NatsKeys {
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        use async_nats::jetstream::kv::CreateErrorKind;
        Box::pin(async move {
            let value = serde_json::to_vec(record).expect("records serialise");
            match self.bucket().await?.create(key, value.into()).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, KeyRecord)>, KeyStoreError>> {
        use async_nats::jetstream::kv::Operation;
        Box::pin(async move {
            let entry = self.bucket().await?.entry(key).await.map_err(failed)?;
            Ok(match entry {
                Some(entry) if entry.operation == Operation::Put => {
                    let record = serde_json::from_slice(&entry.value).map_err(failed)?;
                    Some((entry.revision, record))
                }
                _ => None,
            })
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        use async_nats::jetstream::kv::UpdateErrorKind;
        Box::pin(async move {
            let value = serde_json::to_vec(record).expect("records serialise");
            match self
                .bucket()
                .await?
                .update(key, value.into(), revision)
                .await
            {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(async move { self.bucket().await?.purge(key).await.map_err(failed) })
    }
}
