//! `Idempotency-Key` on writes, as draft-ietf-httpapi-idempotency-key-header-07 says: the
//! first request with a key is performed and its response stored with a *fingerprint* of the
//! request (method, target, body digest); a retry with the same key and fingerprint gets that
//! response again, marked `Idempotent-Replayed: true`, and applies nothing; the same key with
//! another fingerprint is 422; the same key while its first request is in progress is 409.
//!
//! Keys belong to the caller (the API key's name, [`crate::auth::Caller`]), are shared by every
//! gateway and partition and live in the JetStream KV
//! bucket [`protocol::subjects::IDEMPOTENCY_BUCKET`], which forgets them by age (24 h by
//! default). A key whose first request never finished (its gateway died) is taken over after
//! [`AppState::keys_abandoned_after`]: the request id is the same, so the log still applies it
//! at most once. The log-level request ids that make the gateway's own retries exactly-once
//! are a separate mechanism ([`crate::extract::RequestId`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{KeyedRequest, MAX_BODY};

mod memory;
mod nats;
mod retrying;

pub use memory::MemoryKeys;
pub use nats::NatsKeys;
pub use retrying::Retrying;

/// The longest `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// The header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

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
    /// A random token of the request that holds the key: a claim sent again after its first
    /// attempt's answer was lost (its NATS connection died) finds its own token and knows the
    /// key is its own, not another request's in progress.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    claim: String,
}

/// Why the idempotency-key store did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStoreError {
    /// It could not be reached, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// It holds as many bytes as it may (`IDEMPOTENCY_KEY_MAX_BYTES`): no new key is taken
    /// until old ones expire.
    #[error("the Idempotency-Key store is full: {0}")]
    Full(String),
}

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
        claim: uuid::Uuid::new_v4().to_string(),
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
        if found.claim == pending.claim {
            return Ok(Claim::Owner(revision)); // an earlier attempt of ours landed
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

/// The keys the middleware works with: where they are kept, and after how long a key whose
/// first request never finished may be taken over.
#[derive(Clone)]
pub struct Keys {
    /// The store.
    pub store: Arc<dyn KeyStore>,
    /// A key still pending after this long is taken over by its next request.
    pub abandoned_after: std::time::Duration,
}

/// Middleware on the write routes: answers, refuses or performs a request that carries an
/// `Idempotency-Key`, and stores the response of one it performed.
pub async fn idempotent(State(keys): State<Keys>, request: Request, next: Next) -> Response {
    let Some(key) = request.headers().get("idempotency-key") else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k)
            if (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            return ApiError::BadRequest(format!(
                "Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"
            ))
            .into_response()
        }
    };
    let (mut parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let target = parts.uri.path_and_query().map_or("", |t| t.as_str());
    let fingerprint = digest(&[parts.method.as_str().as_bytes(), target.as_bytes(), &body]);
    // Keys are the caller's own: another API key with the same Idempotency-Key is another key
    // (without authentication every caller is the same, and the key alone names it).
    let scoped = match parts.extensions.get::<Caller>() {
        Some(caller) => format!("{}\n{key}", caller.0),
        None => key.clone(),
    };
    let store_key = digest(&[scoped.as_bytes()]);
    let request_id = format!(
        "idem:{}",
        &digest(&[scoped.as_bytes(), fingerprint.as_bytes()])[..32]
    );
    parts.extensions.insert(KeyedRequest(request_id));

    let claimed = claim(&*keys.store, &store_key, &fingerprint, keys.abandoned_after).await;
    let revision = match claimed {
        Err(KeyStoreError::Full(_)) => return ApiError::KeysFull.into_response(),
        Err(KeyStoreError::Unavailable(e)) => return ApiError::KeysUnavailable(e).into_response(),
        Ok(Claim::Reused) => return ApiError::KeyReused(key).into_response(),
        Ok(Claim::InUse) => return ApiError::KeyInUse(key).into_response(),
        Ok(Claim::Replay(stored)) => return replay(stored),
        Ok(Claim::Owner(revision)) => revision,
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.status().is_server_error() {
        // No definite outcome: let a retry perform it again (same request id: at most once).
        if let Err(e) = keys.store.delete(&store_key).await {
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
        claim: String::new(),
    };
    if let Err(e) = keys.store.update(&store_key, &done, revision).await {
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
