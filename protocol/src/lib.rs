//! ringstore's wire protocol: everything two ringstore processes must agree on, and nothing
//! that does I/O.
//!
//! - [`user`]: the `User` record, the bodies that make and change it, and their rules;
//! - [`partition`]: the stable partition hash and the partition → node map;
//! - [`subjects`]: every NATS subject and JetStream stream name;
//! - [`access`]: the NATS accounts and what each identity may do (rendered as `nats.conf`);
//! - [`params`]: the query parameters of LIST and COUNT;
//! - [`messages`]: request, reply and log-entry types carried over NATS;
//! - [`timing`]: request deadlines that cross NATS;
//! - [`error`]: [`ProtocolError`], the errors a dbnode answers with.

pub mod access;
pub mod decide;
pub mod error;
pub mod messages;
pub mod params;
pub mod partition;
pub mod subjects;
pub mod timing;
pub mod user;

pub use error::{FieldError, ProtocolError};
pub use messages::{
    Answer, CountRequest, GetRequest, LogEntry, NodeState, Presence, PresencePartition, Reply,
    Response, ScanRequest, VersionedUser, WriteKind, WriteRequest,
};
pub use params::{ChangeParams, CountParams, ListParams, Position, Since};
pub use partition::{
    Holders, MapError, NodeId, PartitionId, PartitionMap, Role, DEFAULT_PARTITIONS,
};
pub use subjects::Op;
pub use user::{NewUser, User, UserPatch, UserUpdate};
