//! Exponential backoff with full jitter, for waiting acquires and renewal retries.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: attempt `n` sleeps a uniformly random
/// time in `[0, min(max, initial · 2ⁿ)]`.
///
/// Full jitter spreads waiters out so that they do not retry in lock step
/// after a release (see the AWS Architecture Blog, "Exponential Backoff And
/// Jitter"). Waiters also never sleep past the holder's reported expiry, and
/// backends with release notifications wake them sooner still.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `initial` and capped at `max` (raised to `initial`
    /// if smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The upper bound of the sleep before retry number `attempt` (from 0).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random sleep for retry number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

impl Default for Backoff {
    /// 10 ms doubling up to 1 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(10), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(10));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(80));
        assert_eq!(backoff.ceiling(10), Duration::from_millis(300));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(300));
        for attempt in 0..40 {
            assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(0)).collect();
        assert!(delays.len() > 10);
    }
}
