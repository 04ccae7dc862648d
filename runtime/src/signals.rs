//! SIGINT and SIGTERM as a [`CancellationToken`], caught from the moment [`Signals::install`]
//! returns, so that a signal at any later point is a graceful shutdown.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The signal handlers, installed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers (call it first thing in `main`, inside the runtime).
    pub fn install() -> Self {
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// A token that the first signal cancels.
    pub fn token(self) -> CancellationToken {
        let token = CancellationToken::new();
        tokio::spawn(self.cancel_on_first(token.clone()));
        token
    }

    /// Waits for the first signal, then cancels `shutdown`.
    async fn cancel_on_first(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        shutdown.cancel();
    }
}
