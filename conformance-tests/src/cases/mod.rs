//! The example cases, one or more per promise of the contract.
//!
//! Every case is a `pub async fn(Ctx)` that panics with a message naming the
//! broken promise. The list in [`__cases!`](crate::__cases) is the only place
//! a case is registered, so a backend that uses [`suite!`](crate::suite) runs
//! all of them.

use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, Backoff, FencingToken, Holder, LeaseId, LockError, LockKey,
    LockStore, OwnerLabel, Ttl,
};
use tokio::time::Instant;

use crate::{Ctx, Profile};

mod acquire_loop;
mod election;
mod fencing;
mod guard;
mod isolation;
mod lifecycle;
pub(crate) mod network;
mod ownership;
mod pause;
mod restart;
mod schedule;
mod skew;
mod validation;
mod waiting;

pub use crate::concurrency::concurrent_holders_never_overlap;
pub use crate::linearizability::lock_histories_are_linearizable;
pub use crate::model::model_based_sequences;
pub use acquire_loop::*;
pub use election::*;
pub use fencing::*;
pub use guard::*;
pub use isolation::*;
pub use lifecycle::*;
pub use network::*;
pub use ownership::*;
pub use pause::*;
pub use restart::*;
pub use schedule::*;
pub use skew::*;
pub use validation::*;
pub use waiting::*;

/// Expands the case list into tests; see [`crate::suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($backend:ident, $harness:expr) => {
        $crate::__cases!(@emit $backend, $harness, [
            (lifecycle_acquire_inspect_release, Default),
            (free_key_has_no_holder, Default),
            (held_key_reports_its_holder, Default),
            (default_owner_label_names_process_and_task, Default),
            (release_frees_the_key_at_once, Default),
            (expiry_allows_takeover, Default),
            (renew_extends_the_lease, Default),
            (renew_after_expiry_is_lease_lost, Default),
            (retried_acquire_with_same_lease_id_keeps_the_lease, Default),
            (foreign_lease_cannot_renew, Default),
            (foreign_lease_cannot_release, Default),
            (forged_lease_id_changes_nothing, Default),
            (stale_lease_cannot_touch_the_new_holder, Default),
            (double_release_is_harmless, Default),
            (release_after_expiry_is_harmless, Default),
            (fence_increases_after_release, Default),
            (fence_increases_after_expiry_takeover, Default),
            (fence_unchanged_by_renewal, Default),
            (fence_strictly_increases_over_many_cycles, Default),
            (keys_are_independent, Default),
            (namespaces_are_independent, Default),
            (long_and_unusual_keys_work, Default),
            (invalid_keys_are_rejected_before_any_request, Default),
            (invalid_ttls_are_rejected_before_any_request, Default),
            (malformed_lease_ids_are_rejected, Default),
            (guard_keeps_lease_alive_across_many_ttls, Default),
            (guard_release_frees_the_key, Default),
            (dropped_guard_releases_the_key, Default),
            (guard_signals_loss_when_renewal_finds_lease_gone, Default),
            (guard_signals_loss_before_takeover_when_partitioned, Default),
            (guard_reports_loss_by_its_deadline_when_starved, Default),
            (guard_reports_loss_when_its_task_dies, Default),
            (no_wait_acquire_fails_fast_naming_the_holder, Default),
            (waiting_acquire_times_out_naming_the_holder, Default),
            (waiting_acquire_wakes_promptly_on_release, Default),
            (waiters_of_one_client_ask_in_turn, Default),
            (a_cancelled_front_waiter_passes_the_turn_on, Default),
            (waiting_acquire_takes_over_after_expiry, Default),
            (acquire_with_lost_reply_leaves_no_orphan, Default),
            (acquire_giving_up_after_errors_reports_the_backend_error, Default),
            (acquire_retried_after_lost_reply_keeps_its_grant, Default),
            (acquire_attempt_is_bounded_by_the_wait, Default),
            (with_lock_runs_work_and_releases, Default),
            (with_lock_stops_work_when_lease_is_lost, Default),
            (dyn_lock_store_works, Default),
            (scheduled_tick_runs_on_one_replica, Default),
            (scheduled_tick_is_free_once_its_holds_are_over, Default),
            (scheduled_tick_of_a_crashed_replica_is_free_after_hold_at_most, Default),
            (election_has_one_leader_at_a_time_with_rising_terms, Default),
            (election_publishes_and_proclaims_the_leaders_value, Default),
            (election_resignation_hands_over_to_a_waiting_candidate, Default),
            (election_paused_leader_is_deposed_and_knows_it, Default),
            (election_killed_leader_process_is_replaced, MultiThread),
            (election_observer_sees_each_change_in_order, Default),
            (election_lead_campaigns_again_after_a_loss_and_resigns_on_cancel, Default),
            (model_based_sequences, Default),
            (concurrent_holders_never_overlap, MultiThread),
            (lock_histories_are_linearizable, MultiThread),
            (network_delay_past_the_ttl_cuts_the_holder_off_safely, MultiThread),
            (network_blackhole_cuts_the_holder_off_safely, MultiThread),
            (network_reset_cuts_the_holder_off_safely, MultiThread),
            (network_half_open_losing_replies_cuts_the_holder_off_safely, MultiThread),
            (network_half_open_closing_requests_cuts_the_holder_off_safely, MultiThread),
            (server_restart_while_held_and_awaited_keeps_fences_rising, MultiThread),
            (paused_holder_process_is_fenced_out_after_a_takeover, MultiThread),
            (client_clock_skew_within_the_allowance_never_takes_over_early, MultiThread),
            (client_clock_skew_beyond_the_allowance_is_fenced_or_skew_free, MultiThread),
        ]);
    };
    (@emit $backend:ident, $harness:expr, [$(($case:ident, $runtime:ident)),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::run_named_case(
                        $harness,
                        $crate::Runtime::$runtime,
                        Some($crate::test_name(module_path!(), stringify!($case))),
                        |ctx| ::std::boxed::Box::pin($crate::cases::$case(ctx)),
                    );
                }
            )*
        }
    };
}

pub(crate) fn key(name: &str) -> LockKey {
    LockKey::new(name).expect("test keys are valid")
}

pub(crate) fn ttl(duration: Duration) -> Ttl {
    Ttl::new(duration).expect("test TTLs are valid")
}

/// A TTL no case waits out.
pub(crate) fn long_ttl(ctx: &Ctx) -> Duration {
    ctx.profile().short_ttl * 25
}

pub(crate) fn request(key: &LockKey, duration: Duration, owner: &str) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: ttl(duration),
        owner: OwnerLabel::new(owner).expect("test owners are valid"),
    }
}

/// Acquires `key` for `owner`, failing the case if the key is not free.
pub(crate) async fn must_acquire(
    store: &dyn LockStore,
    key: &LockKey,
    duration: Duration,
    owner: &str,
) -> (AcquireRequest, FencingToken) {
    let request = request(key, duration, owner);
    match store.try_acquire(&request).await {
        Ok(AcquireOutcome::Acquired { fence }) => (request, fence),
        Ok(AcquireOutcome::Held(holder)) => {
            panic!("{owner} could not acquire free key {key}: held by {holder:?}")
        }
        Err(err) => panic!("{owner} acquire of {key} failed: {err}"),
    }
}

/// Tries to acquire `key` for `owner`, failing the case unless it is held.
pub(crate) async fn must_be_held(
    store: &dyn LockStore,
    key: &LockKey,
    duration: Duration,
    owner: &str,
) -> Holder {
    match store.try_acquire(&request(key, duration, owner)).await {
        Ok(AcquireOutcome::Held(holder)) => holder,
        Ok(AcquireOutcome::Acquired { fence }) => {
            panic!("mutual exclusion broken: {owner} acquired held key {key} (fence {fence})")
        }
        Err(err) => panic!("{owner} acquire of {key} failed: {err}"),
    }
}

/// How long a fault case waits for something that must happen before it
/// calls it a hang: far beyond any timeout the stores or the client layer
/// configure, so it never decides an outcome, only catches a hang.
pub(crate) const HANG: Duration = Duration::from_secs(30);

/// The backoff of a waiter that a release must wake: an hour where the
/// backend notifies releases (no timer adds a request, and a lost wake-up
/// shows as a hang), short polling where it does not.
pub(crate) fn woken_by_release(profile: &Profile) -> Backoff {
    if profile.release_notifications {
        Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600))
    } else {
        Backoff::new(Duration::from_millis(10), profile.short_ttl / 2)
    }
}

/// Whether the backend keeps its `what` ("locks", "permits") inside this
/// process, so a case about holder processes has nothing to run: true only
/// for a profile saying [`Processes::OneProcess`](crate::Processes), which
/// fails the case unless `backend` is the memory backend, the one store
/// that lives in one process.
pub(crate) fn in_one_process(ctx: &Ctx, backend: &str, what: &str) -> bool {
    if ctx.profile().processes != crate::Processes::OneProcess {
        return false;
    }
    assert_eq!(
        backend, "memory",
        "{backend}'s profile says Processes::OneProcess, but only the memory backend keeps \
         its {what} inside one process"
    );
    true
}

/// The backends whose stores live in this process or a file on this host.
pub(crate) const EMBEDDED_BACKENDS: [&str; 2] = ["memory", "sqlite"];

/// Fails the case unless `result` is the failure a client may retry: a
/// retryable [`LockError::Backend`], or a [`LockError::Timeout`] that
/// carries one as its last error.
pub(crate) fn assert_retryable_failure<T: std::fmt::Debug>(
    result: &Result<T, LockError>,
    what: &str,
) {
    match result {
        Err(LockError::Backend {
            retryable: true, ..
        }) => {}
        Err(LockError::Timeout {
            last_error: Some(err),
            ..
        }) if err.is_retryable() => {}
        other => panic!(
            "{what}: expected a retryable backend error (or a timeout carrying one), got {other:?}"
        ),
    }
}

/// Whether a lease granted (or renewed) by a request sent at `sent` for
/// `ttl` was certainly live when a reply that arrived at `replied` was
/// made: the server started counting no earlier than `sent` and answered
/// no later than `replied`, and the profile's tolerance covers clock
/// granularity. Cases assert "still held" only where this holds, so that
/// a slow machine never turns a late check into a failure.
pub(crate) fn surely_live(ctx: &Ctx, sent: Instant, ttl: Duration, replied: Instant) -> bool {
    replied + ctx.profile().tolerance < sent + ttl
}

/// A second client takes `key` over as soon as the store lets it: tries
/// until granted (a hang-catching bound only), and returns when the grant's
/// reply **arrived** — by then the server had granted it, so any holder
/// must already have stopped trusting its lease — with the lease.
pub(crate) async fn take_over(
    ctx: &Ctx,
    store: &dyn LockStore,
    key: &LockKey,
    duration: Duration,
) -> (Instant, AcquireRequest, FencingToken) {
    let give_up = Instant::now() + HANG;
    let request = request(key, duration, "taker");
    loop {
        match tokio::time::timeout(HANG, store.try_acquire(&request))
            .await
            .expect("a takeover attempt on a healthy path hung")
        {
            Ok(AcquireOutcome::Acquired { fence }) => return (Instant::now(), request, fence),
            Ok(AcquireOutcome::Held(_)) => {}
            Err(err) => panic!("a takeover attempt on a healthy path failed: {err}"),
        }
        assert!(
            Instant::now() < give_up,
            "{key} was never free for a takeover within {HANG:?}"
        );
        ctx.sleep(ctx.profile().short_ttl / 40).await;
    }
}
