//! The partition map in NATS (docs/design.md "The partition map"): one key ([`MAP_KEY`]) of a
//! replicated key-value bucket ([`MAP_BUCKET`]), revisioned by JetStream, written only by the
//! operator's identity (`dbnode --provision`, later the CLI's moves), read by every process.
//! The partition *count* in it never changes after the first write.

use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::{self, kv, stream::StorageType, ErrorCode};
use protocol::subjects::{MAP_BUCKET, MAP_KEY};
use protocol::PartitionMap;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long one request to JetStream may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How many revisions of the map the bucket keeps (its history, for operators).
const MAP_HISTORY: i64 = 64;

/// Why the map could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MapStoreError {
    /// There is no map yet: the deployment has not been provisioned.
    #[error("no partition map in NATS yet (bucket {MAP_BUCKET}): provision the deployment")]
    Missing,
    /// NATS or JetStream did not answer as expected.
    #[error("reading the partition map: {0}")]
    Unavailable(String),
    /// What the bucket holds is not a usable map, or not the one asked for.
    #[error("{0}")]
    Invalid(String),
}

fn jetstream(client: &async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(MAP_TIMEOUT);
    js
}

fn decode(bytes: &[u8]) -> Result<PartitionMap, MapStoreError> {
    let map: PartitionMap = serde_json::from_slice(bytes)
        .map_err(|e| MapStoreError::Invalid(format!("the stored partition map: {e}")))?;
    map.validate()
        .map_err(|e| MapStoreError::Invalid(e.to_string()))?;
    Ok(map)
}

/// The current map and its revision in the bucket.
pub async fn read(client: &async_nats::Client) -> Result<(PartitionMap, u64), MapStoreError> {
    let store =
        jetstream(client)
            .get_key_value(MAP_BUCKET)
            .await
            .map_err(|e| match no_such_stream(&e) {
                true => MapStoreError::Missing,
                false => MapStoreError::Unavailable(e.to_string()),
            })?;
    stored(&store).await
}

/// True when the bucket's stream does not exist (the error `get_key_value` wraps).
fn no_such_stream(e: &jetstream::context::KeyValueError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|e| {
            matches!(e.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
        })
}

/// The map `store` holds, and its revision.
async fn stored(store: &kv::Store) -> Result<(PartitionMap, u64), MapStoreError> {
    let entry = store
        .entry(MAP_KEY)
        .await
        .map_err(|e| MapStoreError::Unavailable(e.to_string()))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            Ok((decode(&entry.value)?, entry.revision))
        }
        _ => Err(MapStoreError::Missing),
    }
}

/// Makes sure the bucket holds a map (with `replicas` copies, like the logs): writes `initial`
/// if it holds none, and returns what it holds. Refuses when the stored map has another
/// partition count than `initial`: the count is fixed for the deployment's life.
pub async fn ensure(
    client: &async_nats::Client,
    initial: &PartitionMap,
    replicas: usize,
) -> Result<PartitionMap, MapStoreError> {
    let js = jetstream(client);
    let unavailable = |e: &dyn std::fmt::Display| MapStoreError::Unavailable(e.to_string());
    let store = match js.get_key_value(MAP_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: MAP_BUCKET.to_owned(),
                description: "ringstore partition map: which node holds which partition".to_owned(),
                history: MAP_HISTORY,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?,
    };
    let bytes = serde_json::to_vec(initial).expect("maps serialise");
    if let Err(e) = store.create(MAP_KEY, bytes.into()).await {
        if e.kind() != kv::CreateErrorKind::AlreadyExists {
            return Err(unavailable(&e));
        }
    }
    let (stored, _) = stored(&store).await?;
    if stored.count() != initial.count() {
        return Err(MapStoreError::Invalid(format!(
            "the deployment has {} partitions (its partition map says so); PARTITIONS={} \
             cannot change that: partitions move, their number stays",
            stored.count(),
            initial.count()
        )));
    }
    Ok(stored)
}

/// The map, read again every second while it is missing or NATS does not answer, until
/// `shutdown` (then `Ok(None)`). With `create` (the first map and its copies), a missing map is
/// written first, as `--provision` does and as a node on an open NATS server does for itself.
/// A stored map that cannot be used is an error at once: retrying will not mend it.
pub async fn wait(
    client: &async_nats::Client,
    create: Option<(&PartitionMap, usize)>,
    shutdown: &CancellationToken,
) -> Result<Option<PartitionMap>, MapStoreError> {
    loop {
        let attempt = match create {
            Some((initial, replicas)) => ensure(client, initial, replicas).await,
            None => read(client).await.map(|(map, _)| map),
        };
        match attempt {
            Ok(map) => return Ok(Some(map)),
            Err(e @ MapStoreError::Invalid(_)) => return Err(e),
            Err(e) => warn!(error = %e, "no partition map yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
