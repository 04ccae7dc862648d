//! [`AppState`]: what every handler and middleware shares.

use std::sync::Arc;

use crate::idempotency::Keys;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::presence::PresenceTable;
use crate::store::Store;

/// What every handler shares.
pub struct AppState {
    /// Where records live.
    pub store: Arc<dyn Store>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Dbnode heartbeats.
    pub presence: Arc<PresenceTable>,
    /// Idempotency keys.
    pub keys: Keys,
    /// Requests served at once; more are shed with 503.
    pub max_concurrent: usize,
    /// How long a whole request may take (`MAX_REQUEST_MS`); then 408.
    pub max_request: std::time::Duration,
    /// The API keys (`API_KEYS_FILE`); `None`: no authentication.
    pub api_keys: Option<Arc<crate::auth::ApiKeys>>,
    /// The partition logs, read for change feeds and the cluster view; `None` without NATS
    /// (router tests), where change feeds are 503.
    pub logs: Option<Arc<Logs>>,
}
