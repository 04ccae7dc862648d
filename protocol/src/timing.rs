//! Deadlines that cross NATS. A request carries the wall-clock instant (Unix milliseconds) after
//! which its sender no longer waits for the answer; a dbnode that receives it later (queued
//! behind a pause, say) drops it instead of running it. Absolute rather than relative, because
//! a relative budget would restart when a paused receiver finally reads the message; this
//! assumes the hosts' clocks agree to well within a request budget (NTP).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The deadline `budget` from now, in Unix milliseconds (at least 1: 0 means "none").
pub fn deadline_in(budget: Duration) -> u64 {
    (now_ms() + budget.as_millis() as u64).max(1)
}

/// Time left until `deadline` (Unix ms); `None` when it has passed. A zero deadline is none:
/// unlimited.
pub fn remaining(deadline: u64) -> Option<Duration> {
    if deadline == 0 {
        return Some(Duration::MAX);
    }
    let now = now_ms();
    (deadline > now).then(|| Duration::from_millis(deadline - now))
}

/// How often a dbnode announces itself, and how often a gateway asks each node how it is.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A node that has not answered for this long is presumed down: three heartbeats.
pub const SILENT_AFTER: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_in_the_future_has_time_left_and_a_past_one_none() {
        let soon = deadline_in(Duration::from_secs(5));
        let left = remaining(soon).expect("time left");
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
        assert_eq!(remaining(now_ms() - 1), None);
        assert_eq!(remaining(0), Some(Duration::MAX));
    }
}
