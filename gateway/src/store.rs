//! The gateway's view of the data: a [`Store`] answers each call with
//! `Result<Result<T, ProtocolError>, TransportError>`, so that "the node said not found" and
//! "no node answered" can never be confused.

use futures::future::BoxFuture;
use protocol::{ProtocolError, Reply, VersionedUser, WriteKind};

use crate::list::Page;

/// No dbnode gave an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Nothing listens for the partition (every copy is down).
    #[error("no dbnode serves this partition")]
    NoResponders,
    /// A dbnode took the request but did not answer in time.
    #[error("the dbnode did not answer in time")]
    TimedOut,
    /// NATS is unreachable or refused the request.
    #[error("nats: {0}")]
    Other(String),
}

/// What a store call returns.
pub type StoreResult<T> = Result<Result<T, ProtocolError>, TransportError>;

/// Where the gateway reads and writes records. Object-safe, so handlers take `dyn Store`.
pub trait Store: Send + Sync + 'static {
    /// Reads one record.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<VersionedUser>>;
    /// Performs a write; `request_id` identifies it across retries.
    fn write(&self, request_id: String, kind: WriteKind) -> BoxFuture<'_, StoreResult<Reply>>;
    /// Up to `limit` records after `after` in id order, over all partitions.
    fn scan(
        &self,
        after: Option<String>,
        limit: u32,
        group: Option<u32>,
    ) -> BoxFuture<'_, StoreResult<Page>>;
    /// The number of records, in total or in one group.
    fn count(&self, group: Option<u32>) -> BoxFuture<'_, StoreResult<u64>>;
    /// True when NATS is connected and every partition answers.
    fn ready(&self) -> BoxFuture<'_, bool>;
}
