//! Scheduled jobs on many replicas: run each tick once.
//!
//! A cron schedule in a service with three replicas fires on all three. To
//! run the job once per tick, every replica asks for the same lock —
//! named by the job **and the tick's scheduled time**, not the moment its
//! timer happened to fire — and only the one that gets it runs. Two bounds
//! (ShedLock's `lockAtMostFor` and `lockAtLeastFor`) make that safe:
//!
//! * **Hold at most** is the lease's TTL. The winner's guard renews it while
//!   the job runs, so a long run keeps its tick; a replica that crashes
//!   stops renewing, and the tick is free again within that time (for a
//!   replica that fires late, or retries).
//! * **Hold at least** keeps the tick taken for that long after the start,
//!   however fast the run: a replica whose timer fires late (a slow host, a
//!   GC pause, clocks apart) finds the tick still taken instead of running
//!   it a second time. Choose it above the largest spread of firing times
//!   between replicas, and below the schedule's period.
//!
//! After *hold at least*, a finished tick's lock is gone: a replica firing
//! later than that would run the tick again. Where a tick must never run
//! twice whatever the delay, use the run-once ledger with the same key
//! ([`tick_key`] with [`Ledger::run_once`](crate::ledger::Ledger::run_once)):
//! its records remember a success until they are purged.
//!
//! ```
//! # use lockstore_api::*;
//! # use lockstore_api::schedule::{Tick, TickOptions, tick_of};
//! # async fn demo(client: LockClient) -> Result<(), LockError> {
//! use std::time::{Duration, SystemTime};
//!
//! // In the scheduler's callback, every second on every replica:
//! let scheduled = tick_of(SystemTime::now(), Duration::from_secs(1));
//! let options = TickOptions::new(Duration::from_secs(30)).hold_at_least(Duration::from_millis(500));
//! match client.run_tick("sync-orders", scheduled, options, |lease| async move {
//!     sync_orders(lease.fence().get()).await
//! }).await? {
//!     Tick::Ran { value, .. } => println!("synced {value} orders"),
//!     Tick::Skipped { holder } => println!("another replica has this tick: {holder:?}"),
//! }
//! # Ok(()) }
//! # async fn sync_orders(_fence: u64) -> u32 { 0 }
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::{
    AcquireOptions, FencingToken, Holder, LeaseHandle, LockClient, LockError, LockKey, LockStore,
    Ttl,
};

/// The two bounds of a scheduled run; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickOptions {
    hold_at_most: Duration,
    hold_at_least: Duration,
}

impl TickOptions {
    /// Holds the tick at most `hold_at_most` past the last renewal of a run
    /// that stopped renewing (it crashed); a run that finishes frees the tick
    /// at once unless [`TickOptions::hold_at_least`] says otherwise.
    pub fn new(hold_at_most: Duration) -> Self {
        Self {
            hold_at_most,
            hold_at_least: Duration::ZERO,
        }
    }

    /// Keeps the tick taken at least this long after the run started,
    /// however fast it finished. At most the `hold_at_most` TTL.
    pub fn hold_at_least(mut self, hold_at_least: Duration) -> Self {
        self.hold_at_least = hold_at_least;
        self
    }

    fn validate(&self) -> Result<(), LockError> {
        Ttl::new(self.hold_at_most)?;
        if self.hold_at_least > self.hold_at_most {
            return Err(LockError::InvalidArgument {
                name: "hold_at_least",
                reason: format!(
                    "hold at least ({:?}) is longer than hold at most ({:?}), the lease's TTL; \
                     use a hold at least no longer than the TTL",
                    self.hold_at_least, self.hold_at_most
                ),
            });
        }
        Ok(())
    }
}

/// What [`LockClient::run_tick`] did.
#[derive(Debug)]
#[must_use]
pub enum Tick<T> {
    /// This replica had the tick and ran the job.
    Ran {
        /// What the job returned.
        value: T,
        /// The fencing token the job ran under.
        fence: FencingToken,
    },
    /// Another replica has (or had, within its bounds) this tick.
    Skipped {
        /// Who holds it, as the refusal said.
        holder: Option<Holder>,
    },
}

/// The lock key of one tick of a job: `JOB@` and the tick's scheduled time
/// in UTC, RFC 3339 to the second (`sync@2026-12-07T14:05:00Z`).
///
/// # Errors
/// [`LockError::InvalidArgument`] for a time before 1970 or with a fraction
/// of a second (a tick is a whole second; see [`tick_of`]), and the key's
/// own errors (too long, NUL) for the job name.
pub fn tick_key(job: &str, scheduled: SystemTime) -> Result<LockKey, LockError> {
    let since_epoch =
        scheduled
            .duration_since(UNIX_EPOCH)
            .map_err(|_| LockError::InvalidArgument {
                name: "scheduled",
                reason: "a tick's scheduled time is before 1970".into(),
            })?;
    if since_epoch.subsec_nanos() != 0 {
        return Err(LockError::InvalidArgument {
            name: "scheduled",
            reason: format!(
                "a tick's scheduled time is a whole second, not {since_epoch:?} after 1970; \
                 round the time the timer fired to its tick with tick_of"
            ),
        });
    }
    LockKey::new(format!(
        "{job}@{}",
        humantime::format_rfc3339_seconds(scheduled)
    ))
}

/// The tick a timer that fired at `fired` belongs to, for a schedule that
/// ticks every `period` (whole seconds, counted from 1970 in UTC, as cron
/// does): the **nearest** multiple of `period`, so a timer that fires a
/// little early or late names the same tick. Fine for timers less than half
/// a period off; a scheduler that tells the scheduled time itself is better.
/// A `period` under a second counts as one second.
pub fn tick_of(fired: SystemTime, period: Duration) -> SystemTime {
    let period = period.as_secs().max(1);
    let since_epoch = fired
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let period_ms = u128::from(period) * 1000;
    let tick_ms = (since_epoch + period_ms / 2) / period_ms * period_ms;
    UNIX_EPOCH + Duration::from_millis(u64::try_from(tick_ms).unwrap_or(u64::MAX))
}

impl<S: ?Sized + LockStore> LockClient<S> {
    /// Runs `work` for the tick of `job` scheduled at `scheduled` unless
    /// another replica has it: one attempt, no waiting. The tick's lock
    /// ([`tick_key`]) is held for the options' bounds, renewed while `work`
    /// runs; see the [schedule module](crate::schedule).
    ///
    /// If the lease is lost before `work` finishes, `work` is dropped at its
    /// next await point and the call fails with [`LockError::LeaseLost`], as
    /// [`LockClient::with_lock`] does.
    ///
    /// # Errors
    /// Input errors before any request (the key, a TTL out of range, a hold
    /// at least over the hold at most), backend errors, and
    /// [`LockError::LeaseLost`].
    pub async fn run_tick<F, Fut, T>(
        &self,
        job: &str,
        scheduled: SystemTime,
        options: TickOptions,
        work: F,
    ) -> Result<Tick<T>, LockError>
    where
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        options.validate()?;
        let key = tick_key(job, scheduled)?;
        let started = Instant::now();
        let guard = match self
            .acquire(&key, AcquireOptions::new(options.hold_at_most))
            .await
        {
            Ok(guard) => guard,
            Err(LockError::Timeout { holder, .. }) => return Ok(Tick::Skipped { holder }),
            Err(err) => return Err(err),
        };
        let fence = guard.fence();
        // Held on from the acquire's send, not from the end of the work.
        let value = guard
            .run_then_end(work, started + options.hold_at_least)
            .await?;
        Ok(Tick::Ran { value, fence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_keys_name_the_job_and_the_utc_second() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_652_300); // 2026-12-07T14:05:00Z
        assert_eq!(
            tick_key("sync", at).unwrap().as_str(),
            "sync@2026-12-07T14:05:00Z"
        );
        assert!(matches!(
            tick_key("sync", at + Duration::from_millis(1)),
            Err(LockError::InvalidArgument {
                name: "scheduled",
                ..
            })
        ));
        assert!(matches!(
            tick_key("sync", UNIX_EPOCH - Duration::from_secs(1)),
            Err(LockError::InvalidArgument { .. })
        ));
        assert!(tick_key("\0", at).is_err());
    }

    #[test]
    fn a_timer_a_little_early_or_late_names_the_same_tick() {
        let tick = UNIX_EPOCH + Duration::from_secs(1_796_652_300);
        let minute = Duration::from_secs(60);
        for off in [0, 1, 400, 29_999] {
            let late = tick + Duration::from_millis(off);
            let early = tick - Duration::from_millis(off);
            assert_eq!(tick_of(late, minute), tick, "{off} ms late");
            assert_eq!(tick_of(early, minute), tick, "{off} ms early");
        }
        assert_eq!(
            tick_of(tick + Duration::from_millis(30_000), minute),
            tick + minute
        );
        assert_eq!(
            tick_of(tick + Duration::from_millis(600), Duration::ZERO),
            tick + Duration::from_secs(1)
        );
    }

    #[test]
    fn hold_at_least_may_not_exceed_hold_at_most() {
        let options =
            TickOptions::new(Duration::from_secs(1)).hold_at_least(Duration::from_secs(2));
        assert!(matches!(
            options.validate(),
            Err(LockError::InvalidArgument {
                name: "hold_at_least",
                ..
            })
        ));
        assert!(matches!(
            TickOptions::new(Duration::ZERO).validate(),
            Err(LockError::InvalidTtl { .. })
        ));
    }
}
