//! The REST handlers, one module per resource: [`users`] (records, LIST, COUNT), [`changes`]
//! (the change feed) and [`ops`] (health, readiness, metrics, the cluster view). The router
//! that wires them, with its layers, is [`crate::app`].

pub mod changes;
pub mod ops;
pub mod users;
