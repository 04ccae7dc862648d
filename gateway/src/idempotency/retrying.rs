//! [`Retrying`]: a key store whose operations are sent again, within one budget, when an
//! attempt gets no answer.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{KeyRecord, KeyStore, KeyStoreError};
use crate::disconnects::Disconnects;

/// How many times an operation is sent, each with an equal share of what is left of the budget.
const ATTEMPTS: u32 = 2;

/// Wraps a store so that each operation is tried up to [`ATTEMPTS`] times within `budget`.
///
/// A request in flight on a NATS connection whose server was killed is lost with it: the
/// client reconnects to another server at once, but nothing answers the lost request, and
/// waiting for the whole budget would stall every keyed write that had one in flight (a 2 s
/// gap, seen when a follower of the key bucket was killed). With two attempts the stall is
/// half the budget, as for the partition calls' two copies, and when the gateway saw its
/// connection die ([`Disconnects`]) it is sent again at once. Every operation is safe to send
/// again: a create or update that landed but whose answer was lost is recognised by the
/// claim token ([`KeyRecord::claim`]), a delete is idempotent, a read has no effect.
pub struct Retrying<S> {
    inner: S,
    budget: Duration,
    disconnects: Disconnects,
}

impl<S: KeyStore> Retrying<S> {
    /// `inner`'s operations, each given `budget` in all, sent again at once after one of
    /// `disconnects`.
    pub fn new(inner: S, budget: Duration, disconnects: Disconnects) -> Self {
        Self {
            inner,
            budget,
            disconnects,
        }
    }

    async fn attempts<'a, T, F>(
        &'a self,
        what: &str,
        attempt: impl Fn(&'a S) -> F,
    ) -> Result<T, KeyStoreError>
    where
        F: Future<Output = Result<T, KeyStoreError>> + 'a,
    {
        let deadline = Instant::now() + self.budget;
        let mut failure = KeyStoreError::Unavailable(format!("{what}: no time left"));
        let mut left = ATTEMPTS;
        let mut resent = false;
        while left > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let sent = tokio::time::timeout(remaining / left, attempt(&self.inner));
            let answered = if resent {
                Some(sent.await)
            } else {
                self.disconnects.unless_lost(sent).await
            };
            match answered {
                Some(Ok(Ok(done))) => return Ok(done),
                Some(Ok(Err(e))) => failure = e,
                Some(Err(_)) => failure = KeyStoreError::Unavailable(format!("{what}: no answer")),
                // Once per operation, and at once: the attempt went down with the connection.
                None => {
                    resent = true;
                    failure = KeyStoreError::Unavailable(format!("{what}: connection lost"));
                    continue;
                }
            }
            left -= 1;
        }
        Err(failure)
    }
}

impl<S: KeyStore> KeyStore for Retrying<S> {
    fn create<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        Box::pin(self.attempts("create", move |s| s.create(key, record)))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, KeyRecord)>, KeyStoreError>> {
        Box::pin(self.attempts("get", move |s| s.get(key)))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        record: &'a KeyRecord,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
        Box::pin(self.attempts("update", move |s| s.update(key, record, revision)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(self.attempts("delete", move |s| s.delete(key)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::{claim, Claim, MemoryKeys};
    use super::*;

    /// A store whose first `lost` operations take effect but are never answered, as a
    /// request whose reply went down with its connection.
    struct Lossy {
        inner: MemoryKeys,
        lost: AtomicU32,
    }

    impl Lossy {
        fn new(lost: u32) -> Self {
            Self {
                inner: MemoryKeys::default(),
                lost: AtomicU32::new(lost),
            }
        }

        fn answer<'a, T: Send + 'a>(
            &'a self,
            done: BoxFuture<'a, Result<T, KeyStoreError>>,
        ) -> BoxFuture<'a, Result<T, KeyStoreError>> {
            let lose = self
                .lost
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            Box::pin(async move {
                let result = done.await; // it takes effect either way
                if lose {
                    std::future::pending::<()>().await;
                }
                result
            })
        }
    }

    impl KeyStore for Lossy {
        fn create<'a>(
            &'a self,
            key: &'a str,
            record: &'a KeyRecord,
        ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
            self.answer(self.inner.create(key, record))
        }

        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<(u64, KeyRecord)>, KeyStoreError>> {
            self.answer(self.inner.get(key))
        }

        fn update<'a>(
            &'a self,
            key: &'a str,
            record: &'a KeyRecord,
            revision: u64,
        ) -> BoxFuture<'a, Result<Option<u64>, KeyStoreError>> {
            self.answer(self.inner.update(key, record, revision))
        }

        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
            self.answer(self.inner.delete(key))
        }
    }

    const BUDGET: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_claim_whose_first_answer_was_lost_owns_the_key_within_half_the_budget() {
        let store = Retrying::new(Lossy::new(1), BUDGET, Disconnects::default());
        let started = Instant::now();
        let claimed = claim(&store, "k", "fingerprint", BUDGET).await;
        assert!(
            matches!(claimed, Ok(Claim::Owner(_))),
            "the request whose create landed must own its key, not see it in use"
        );
        assert!(started.elapsed() <= BUDGET / 2 + Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_lost_with_the_connection_is_sent_again_at_once() {
        let disconnects = Disconnects::default();
        let store = Retrying::new(Lossy::new(1), BUDGET, disconnects.clone());
        let started = Instant::now();
        let claiming = claim(&store, "k", "fingerprint", BUDGET);
        let dropped = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            disconnects.note();
            std::future::pending::<()>().await
        };
        let claimed = tokio::select! {
            claimed = claiming => claimed,
            () = dropped => unreachable!(),
        };
        assert!(matches!(claimed, Ok(Claim::Owner(_))));
        assert_eq!(started.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn another_requests_claim_is_still_in_use() {
        let store = Retrying::new(Lossy::new(0), BUDGET, Disconnects::default());
        assert!(matches!(
            claim(&store, "k", "fingerprint", BUDGET).await,
            Ok(Claim::Owner(_))
        ));
        assert!(matches!(
            claim(&store, "k", "fingerprint", BUDGET).await,
            Ok(Claim::InUse)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_never_answers_fails_at_the_end_of_the_budget() {
        let store = Retrying::new(Lossy::new(u32::MAX), BUDGET, Disconnects::default());
        let started = Instant::now();
        let claimed = claim(&store, "k", "fingerprint", BUDGET).await;
        assert!(claimed.is_err());
        let took = started.elapsed();
        assert!(
            took >= BUDGET && took <= BUDGET + Duration::from_millis(1),
            "{took:?}"
        );
    }
}
