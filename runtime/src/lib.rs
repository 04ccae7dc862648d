//! What the gateway and the dbnode share at run time, and `protocol` (which does no I/O) must
//! not hold: the logging set-up ([`log`]), the NATS connection settings ([`nats`]:
//! credentials, private inbox, TLS, several servers) and the shutdown signals ([`signals`]).

pub mod log;
pub mod nats;
pub mod signals;

pub use log::{LogConfig, LogFormat};
pub use nats::NatsConfig;
pub use signals::Signals;
