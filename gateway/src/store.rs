//! The gateway's view of the data: a [`Store`] answers each call with
//! `Result<Result<T, ProtocolError>, TransportError>`, so that "the node said not found" and
//! "no node answered" can never be confused.

use futures::future::BoxFuture;
use protocol::{ProtocolError, Reply, VersionedUser, WriteKind};

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
    /// True when NATS is connected and every partition answers.
    fn ready(&self) -> BoxFuture<'_, bool>;
}
