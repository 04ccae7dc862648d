//! [`MemoryKeys`]: idempotency keys in memory, for router tests.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{KeyRecord, KeyStore, KeyStoreError};

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
