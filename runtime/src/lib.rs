//! What the gateway and the dbnode share at run time, and `protocol` (which does no I/O) must
//! not hold: the logging set-up ([`log`]), the NATS connection settings ([`nats`]:
//! credentials, private inbox, TLS, several servers), reading a partition log without a
//! consumer ([`log_reader`]), the partition map in NATS ([`map`]) and the shutdown signals ([`signals`]).

pub mod log;
pub mod log_reader;
pub mod map;
pub mod nats;
pub mod signals;

pub use log::{LogConfig, LogFormat};
pub use log_reader::{Batch, LogMessage, LogReadError, LogReader};
pub use nats::NatsConfig;
pub use signals::Signals;
