//! [`Disconnects`]: tells requests in flight that the gateway's NATS connection died.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// Counts the gateway's NATS disconnections. A request in flight on a connection that died is
/// lost with it (the request, or its reply, went down with the socket): the client reconnects
/// to another server at once, and a request run through [`Disconnects::unless_lost`] is sent
/// again at once instead of waiting out its share of the budget.
#[derive(Clone)]
pub struct Disconnects(Arc<watch::Sender<u64>>);

impl Default for Disconnects {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Disconnects {
    /// Records that the connection died (from the client's event callback).
    pub fn note(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Runs `request` to its end, or until the connection dies first: `None` then (the request,
    /// or its reply, went down with it). Watches from before `request` is first polled.
    pub async fn unless_lost<T>(&self, request: impl Future<Output = T>) -> Option<T> {
        let lost = self.next();
        tokio::select! {
            done = request => Some(done),
            () = lost => None,
        }
    }

    /// Resolves at the first disconnection after this call (not when awaited).
    fn next(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut noted = self.0.subscribe();
        async move {
            if noted.changed().await.is_err() {
                std::future::pending::<()>().await; // no sender: no disconnection to come
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn only_a_disconnection_after_the_call_resolves_it() {
        let disconnects = Disconnects::default();
        disconnects.note();
        let next = disconnects.next();
        tokio::pin!(next);
        assert!(
            (&mut next).now_or_never().is_none(),
            "an earlier one counts"
        );
        disconnects.note();
        assert!(next.now_or_never().is_some());
    }
}
