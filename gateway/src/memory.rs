//! An in-memory [`Store`] for router tests: same decisions as a dbnode ([`decide`]), no NATS.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use protocol::decide::decide;
use protocol::{ProtocolError, Reply, User, VersionedUser, WriteKind};

use crate::list::{merge, Page, PartitionPage};

use crate::store::{Store, StoreResult, TransportError};

/// Records in a map; a settable transport failure simulates dead or slow dbnodes.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    records: HashMap<String, VersionedUser>,
    outcomes: HashMap<String, Reply>,
    seq: u64,
    failure: Option<TransportError>,
    delay: Option<std::time::Duration>,
}

impl MemoryStore {
    /// From now on every call fails with `failure` (or succeeds again with `None`).
    pub fn fail_with(&self, failure: Option<TransportError>) {
        self.state.lock().unwrap().failure = failure;
    }

    /// Makes every read take `delay` (a slow dbnode), or none.
    pub fn delay_reads(&self, delay: Option<std::time::Duration>) {
        self.state.lock().unwrap().delay = delay;
    }
}

impl MemoryStore {
    fn get_now(&self, id: &str) -> StoreResult<VersionedUser> {
        let state = self.state.lock().unwrap();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        Ok(state
            .records
            .get(id)
            .cloned()
            .ok_or(ProtocolError::NotFound))
    }

    fn write_now(&self, request_id: String, kind: WriteKind) -> StoreResult<Reply> {
        let mut state = self.state.lock().unwrap();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        if let Some(outcome) = state.outcomes.get(&request_id) {
            return Ok(Ok(outcome.clone()));
        }
        let record = match decide(state.records.get(kind.id()), &kind) {
            Ok(record) => record,
            Err(e) => return Ok(Err(e)),
        };
        state.seq += 1;
        let version = state.seq;
        let reply = match record {
            Some(user) => {
                let stored = VersionedUser { user, version };
                state.records.insert(stored.user.id.clone(), stored.clone());
                Reply::User(stored)
            }
            None => {
                state.records.remove(kind.id());
                Reply::Deleted { version }
            }
        };
        state.outcomes.insert(request_id, reply.clone());
        Ok(Ok(reply))
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<VersionedUser>> {
        let delay = self.state.lock().unwrap().delay;
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            self.get_now(id)
        })
    }

    fn write(&self, request_id: String, kind: WriteKind) -> BoxFuture<'_, StoreResult<Reply>> {
        Box::pin(std::future::ready(self.write_now(request_id, kind)))
    }

    fn scan(
        &self,
        after: Option<String>,
        limit: u32,
        group: Option<u32>,
    ) -> BoxFuture<'_, StoreResult<Page>> {
        let state = self.state.lock().unwrap();
        let result = match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => {
                let mut items: Vec<User> = state
                    .records
                    .values()
                    .map(|r| r.user.clone())
                    .filter(|u| after.as_ref().is_none_or(|a| u.id > *a))
                    .filter(|u| group.is_none_or(|g| u.group == g))
                    .collect();
                items.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(Ok(merge(
                    vec![PartitionPage { items, more: false }],
                    limit as usize,
                )))
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn count(&self, group: Option<u32>) -> BoxFuture<'_, StoreResult<u64>> {
        let state = self.state.lock().unwrap();
        let result = match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(Ok(state
                .records
                .values()
                .filter(|r| group.is_none_or(|g| r.user.group == g))
                .count() as u64)),
        };
        Box::pin(std::future::ready(result))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(
            self.state.lock().unwrap().failure.is_none(),
        ))
    }
}
