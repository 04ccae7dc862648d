//! [`NatsKeys`]: idempotency keys in the JetStream KV bucket
//! [`protocol::subjects::IDEMPOTENCY_BUCKET`].

use std::time::Duration;

use futures::future::BoxFuture;

use super::{KeyRecord, KeyStore, KeyStoreError};

/// Keys in the JetStream KV bucket, opened on first use (the dbnodes create it).
pub struct NatsKeys {
    js: async_nats::jetstream::Context,
    bucket: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
}

impl NatsKeys {
    /// Keys over `client`, each operation under `timeout` (wrap them in
    /// [`super::Retrying`] to send one that got no answer again).
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(timeout);
        Self {
            js,
            bucket: tokio::sync::OnceCell::new(),
        }
    }

    async fn bucket(&self) -> Result<&async_nats::jetstream::kv::Store, KeyStoreError> {
        self.bucket
            .get_or_try_init(|| async {
                self.js
                    .get_key_value(protocol::subjects::IDEMPOTENCY_BUCKET)
                    .await
                    .map_err(failed)
            })
            .await
    }
}

/// JetStream's refusal of a write to a stream at its `max_bytes` (err_code 10077).
const FULL: &str = "maximum bytes exceeded";

fn failed(e: impl std::fmt::Display) -> KeyStoreError {
    let message = e.to_string();
    if message.contains(FULL) {
        KeyStoreError::Full(message)
    } else {
        KeyStoreError::Unavailable(message)
    }
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
