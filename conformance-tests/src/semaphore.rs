//! The semaphore cases: the "Semaphores" part of the contract, against a
//! real store. A backend that implements `SemaphoreStore` returns it from
//! [`Harness::semaphore`](crate::Harness::semaphore) and joins with one line:
//!
//! ```text
//! lockstore_conformance::semaphore_suite!(redis_semaphore, RedisHarness::from_env());
//! ```
//!
//! Each case panics with a message naming the broken promise.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore_api::semaphore::{
    PermitLimit, PermitOutcome, PermitRequest, Permits, Semaphore, SemaphoreStore,
};
use lockstore_api::{
    AcquireOptions, Backoff, FencingToken, LeaseId, LockError, LockKey, OwnerLabel, ReleaseOutcome,
    RenewOutcome,
};
use tokio::time::timeout;

use crate::Ctx;
use crate::cases::{HANG, key, long_ttl, must_acquire, ttl, woken_by_release};
use crate::fault::CountingSemaphores;

pub mod linearizability;
mod model;
mod network;
mod pause;
mod process;
mod resource;

pub use linearizability::semaphore_histories_are_linearizable;
pub use model::semaphore_model_based_sequences;
pub use network::{
    semaphore_network_blackhole_cuts_the_holder_off_safely,
    semaphore_network_half_open_losing_replies_cuts_the_holder_off_safely,
    semaphore_network_lost_acquire_reply_leaves_one_permit,
};
pub use pause::semaphore_paused_holder_process_is_fenced_out;
pub use process::semaphore_holder_processes_never_exceed_the_limit;

/// Expands the semaphore case list into tests; see [`crate::semaphore_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __semaphore_cases {
    ($backend:ident, $harness:expr) => {
        $crate::__semaphore_cases!(@emit $backend, $harness, [
            (semaphore_grants_up_to_the_limit_then_refuses_naming_the_holders, Default),
            (semaphore_release_frees_a_permit_at_once, Default),
            (semaphore_expired_permit_is_taken_by_the_next_acquirer, Default),
            (semaphore_fences_rise_across_release_expiry_and_renewal, Default),
            (semaphore_renew_and_release_need_the_permit_id, Default),
            (semaphore_retried_acquire_with_the_same_permit_id_keeps_its_permit, Default),
            (semaphore_limit_mismatch_is_a_typed_error_naming_both_limits, Default),
            (semaphore_invalid_limits_are_rejected_before_any_request, Default),
            (semaphore_waiting_acquire_wakes_on_release, Default),
            (semaphore_waiters_of_one_client_ask_in_turn, Default),
            (semaphore_waiting_acquire_times_out_naming_a_holder, Default),
            (semaphore_guard_renews_and_reports_loss, Default),
            (semaphore_with_permit_runs_work_and_releases, Default),
            (semaphore_is_apart_from_the_lock_and_other_namespaces, Default),
            (semaphore_concurrent_holders_never_exceed_the_limit, MultiThread),
            (semaphore_holder_processes_never_exceed_the_limit, MultiThread),
            (semaphore_paused_holder_process_is_fenced_out, MultiThread),
            (semaphore_model_based_sequences, Default),
            (semaphore_histories_are_linearizable, MultiThread),
            (semaphore_network_blackhole_cuts_the_holder_off_safely, MultiThread),
            (semaphore_network_half_open_losing_replies_cuts_the_holder_off_safely, MultiThread),
            (semaphore_network_lost_acquire_reply_leaves_one_permit, MultiThread),
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
                        |ctx| ::std::boxed::Box::pin($crate::semaphore::$case(ctx)),
                    );
                }
            )*
        }
    };
}

fn limit(n: u32) -> PermitLimit {
    PermitLimit::new(n).expect("test limits are valid")
}

fn permit_request(k: &LockKey, n: u32, duration: Duration, owner: &str) -> PermitRequest {
    PermitRequest {
        key: k.clone(),
        permit_id: LeaseId::random(),
        limit: limit(n),
        ttl: ttl(duration),
        owner: OwnerLabel::new(owner).expect("test owners are valid"),
    }
}

/// Takes a permit of `k` for `owner`, failing the case if none is free.
async fn must_grant(
    store: &dyn SemaphoreStore,
    k: &LockKey,
    n: u32,
    duration: Duration,
    owner: &str,
) -> (PermitRequest, FencingToken) {
    let request = permit_request(k, n, duration, owner);
    match store.try_acquire_permit(&request).await {
        Ok(PermitOutcome::Granted { fence }) => (request, fence),
        Ok(PermitOutcome::Refused(permits)) => {
            panic!("{owner} got no permit of {k} (limit {n}) although one was free: {permits:?}")
        }
        Err(err) => panic!("{owner}'s permit acquire of {k} failed: {err}"),
    }
}

/// Tries to take a permit, failing the case unless every permit is taken.
async fn must_refuse(
    store: &dyn SemaphoreStore,
    k: &LockKey,
    n: u32,
    duration: Duration,
    owner: &str,
) -> Permits {
    match store
        .try_acquire_permit(&permit_request(k, n, duration, owner))
        .await
    {
        Ok(PermitOutcome::Refused(permits)) => permits,
        Ok(PermitOutcome::Granted { fence }) => {
            panic!("more than {n} permits: {owner} got a permit of full {k} (fence {fence})")
        }
        Err(err) => panic!("{owner}'s permit acquire of {k} failed: {err}"),
    }
}

/// Where a store only takes a lease over after watching it (DynamoDB's
/// skew-free mode), looks at the permits now so the watch starts.
async fn watch_permits(ctx: &Ctx, store: &dyn SemaphoreStore, k: &LockKey) {
    if ctx.profile().takeover_needs_watching {
        store.inspect_permits(k).await.expect("inspect permits");
    }
}

/// At most `limit` permits, and the refusal names every holder and their
/// time left in the same reply.
pub async fn semaphore_grants_up_to_the_limit_then_refuses_naming_the_holders(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-limit");
    let lease = long_ttl(&ctx);
    let mut fences = Vec::new();
    for owner in ["alice", "bob", "carol"] {
        fences.push(must_grant(&*store, &k, 3, lease, owner).await.1);
    }
    let refused = must_refuse(&*store, &k, 3, lease, "dave").await;
    assert_eq!(refused.limit, 3, "the refusal names the wrong limit");
    assert_eq!(refused.free(), 0);
    let mut owners: Vec<&str> = refused.holders.iter().map(|h| h.owner()).collect();
    owners.sort_unstable();
    assert_eq!(
        owners,
        ["alice", "bob", "carol"],
        "the refusal must name every holder"
    );
    let mut seen: Vec<FencingToken> = refused.holders.iter().map(|h| h.fence()).collect();
    seen.sort_unstable();
    assert_eq!(
        seen, fences,
        "the refusal's fences are not the granted ones"
    );
    // A store may end a permit a millisecond after `now + TTL` (its clock is
    // read in whole milliseconds, and it must never end one early).
    let bound = lease + ctx.profile().tolerance + Duration::from_millis(1);
    assert!(
        refused.holders.iter().all(|h| h.expires_in() <= bound),
        "a holder's time left exceeds its TTL: {refused:?}"
    );
    let inspected = store
        .inspect_permits(&k)
        .await
        .unwrap()
        .expect("permits are held");
    assert_eq!(inspected.holders.len(), 3);
    assert_eq!(inspected.limit, 3);
    let free = store
        .inspect_permits(&key("sem-limit-untouched"))
        .await
        .unwrap();
    assert!(free.is_none(), "an unused key reports permits: {free:?}");
}

/// A released permit is free for the next acquirer at once.
pub async fn semaphore_release_frees_a_permit_at_once(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-release");
    let lease = long_ttl(&ctx);
    let (alice, _) = must_grant(&*store, &k, 2, lease, "alice").await;
    let _bob = must_grant(&*store, &k, 2, lease, "bob").await;
    must_refuse(&*store, &k, 2, lease, "carol").await;
    assert_eq!(
        store.release_permit(&k, alice.permit_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    must_grant(&*store, &k, 2, lease, "carol").await;
    must_refuse(&*store, &k, 2, lease, "dave").await;
}

/// A permit not renewed within its TTL counts no more: the next acquirer
/// takes its place in the same request, with no sweeper.
pub async fn semaphore_expired_permit_is_taken_by_the_next_acquirer(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-expiry");
    let short = ctx.profile().short_ttl;
    let (_alice, first) = must_grant(&*store, &k, 2, short, "alice").await;
    let _bob = must_grant(&*store, &k, 2, long_ttl(&ctx), "bob").await;
    watch_permits(&ctx, &*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    let (_carol, fence) = must_grant(&*store, &k, 2, long_ttl(&ctx), "carol").await;
    assert!(fence > first, "fence {fence} after the expired {first}");
    let refused = must_refuse(&*store, &k, 2, long_ttl(&ctx), "dave").await;
    let mut owners: Vec<&str> = refused.holders.iter().map(|h| h.owner()).collect();
    owners.sort_unstable();
    assert_eq!(
        owners,
        ["bob", "carol"],
        "an expired permit is still reported"
    );
}

/// Fences strictly increase per key across every grant — through release,
/// expiry and interleaved grants on another key — and renewal keeps one.
pub async fn semaphore_fences_rise_across_release_expiry_and_renewal(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let (k, other) = (key("sem-fences"), key("sem-fences-other"));
    let lease = long_ttl(&ctx);
    let mut last = FencingToken::new(0);
    let mut next = |fence: FencingToken, what: &str| {
        assert!(fence > last, "{what}: fence {fence} after {last}");
        last = fence;
    };
    let (a, a_fence) = must_grant(&*store, &k, 3, lease, "a").await;
    next(a_fence, "first grant");
    let (_b, fence) = must_grant(&*store, &k, 3, lease, "b").await;
    next(fence, "second grant while the first is held");
    for _ in 0..2 {
        assert_eq!(
            store
                .renew_permit(&k, a.permit_id, ttl(lease))
                .await
                .unwrap(),
            RenewOutcome::Renewed
        );
    }
    let permits = store.inspect_permits(&k).await.unwrap().expect("held");
    assert!(
        permits
            .holders
            .iter()
            .any(|h| h.owner() == "a" && h.fence() == a_fence),
        "renewal changed a's fence: {permits:?}"
    );
    store.release_permit(&k, a.permit_id).await.unwrap();
    let (c, fence) = must_grant(&*store, &k, 3, lease, "c").await;
    next(fence, "grant after a release");
    let (noise, _) = must_grant(&*store, &other, 1, lease, "noise").await;
    store.release_permit(&other, noise.permit_id).await.unwrap();
    let (_short, fence) = must_grant(&*store, &k, 3, ctx.profile().short_ttl, "short").await;
    next(fence, "grant after another key's");
    store.release_permit(&k, c.permit_id).await.unwrap();
    watch_permits(&ctx, &*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    for i in 0..5 {
        let (taker, fence) = must_grant(&*store, &k, 3, lease, &format!("taker-{i}")).await;
        next(fence, "grant after an expiry and repeated releases");
        store.release_permit(&k, taker.permit_id).await.unwrap();
    }
}

/// Only the permit id renews or releases a permit; a forged or stale one
/// changes nothing and says so.
pub async fn semaphore_renew_and_release_need_the_permit_id(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-owner");
    let lease = long_ttl(&ctx);
    let (alice, _) = must_grant(&*store, &k, 2, lease, "alice").await;
    let forged = LeaseId::random();
    assert_eq!(
        store.renew_permit(&k, forged, ttl(lease)).await.unwrap(),
        RenewOutcome::Lost,
        "a forged permit id renewed"
    );
    assert_eq!(
        store.release_permit(&k, forged).await.unwrap(),
        ReleaseOutcome::NotHeld,
        "a forged permit id released"
    );
    assert_eq!(
        store
            .release_permit(&key("sem-owner-other"), alice.permit_id)
            .await
            .unwrap(),
        ReleaseOutcome::NotHeld,
        "a permit id released a permit of another key"
    );
    let permits = store.inspect_permits(&k).await.unwrap().expect("held");
    assert_eq!(
        permits.holders.len(),
        1,
        "a foreign request changed the permits"
    );
    assert_eq!(
        store.release_permit(&k, alice.permit_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.release_permit(&k, alice.permit_id).await.unwrap(),
        ReleaseOutcome::NotHeld,
        "a second release is harmless and says so"
    );
    assert_eq!(
        store
            .renew_permit(&k, alice.permit_id, ttl(lease))
            .await
            .unwrap(),
        RenewOutcome::Lost,
        "a released permit renewed"
    );
}

/// A request retried with the same permit id (its reply was lost) finds its
/// own permit: same fence, and it does not take a second permit.
pub async fn semaphore_retried_acquire_with_the_same_permit_id_keeps_its_permit(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-retry");
    let lease = long_ttl(&ctx);
    let (alice, fence) = must_grant(&*store, &k, 2, lease, "alice").await;
    match store.try_acquire_permit(&alice).await.unwrap() {
        PermitOutcome::Granted { fence: again } => {
            assert_eq!(again, fence, "a retried request got a new fence")
        }
        PermitOutcome::Refused(permits) => panic!("a retried request was refused: {permits:?}"),
    }
    let _bob = must_grant(&*store, &k, 2, lease, "bob").await;
    // Full with alice's one permit and bob's: her retry still finds hers.
    assert!(matches!(
        store.try_acquire_permit(&alice).await.unwrap(),
        PermitOutcome::Granted { fence: again } if again == fence
    ));
    must_refuse(&*store, &k, 2, lease, "carol").await;
}

/// Two limits for one key: the request whose limit differs from the live
/// permits' is a typed error naming both, and nothing is granted; once no
/// permit is live, the key takes the new limit.
pub async fn semaphore_limit_mismatch_is_a_typed_error_naming_both_limits(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-mismatch");
    let lease = long_ttl(&ctx);
    let (alice, _) = must_grant(&*store, &k, 2, lease, "alice").await;
    let outcome = store
        .try_acquire_permit(&permit_request(&k, 3, lease, "bob"))
        .await;
    match outcome {
        Err(LockError::LimitMismatch {
            key: named,
            requested: 3,
            stored: 2,
        }) => assert_eq!(named, k),
        other => panic!(
            "a different limit must be LimitMismatch {{ requested: 3, stored: 2 }}, got {other:?}"
        ),
    }
    let permits = store.inspect_permits(&k).await.unwrap().expect("held");
    assert_eq!(
        (permits.limit, permits.holders.len()),
        (2, 1),
        "the mismatch changed the key"
    );
    let client = ctx.semaphore_client().await;
    let err = client
        .acquire(&k, limit(1), AcquireOptions::new(lease).wait_up_to(HANG))
        .await
        .expect_err("the client must not wait out a limit mismatch");
    assert!(
        matches!(
            err,
            LockError::LimitMismatch {
                requested: 1,
                stored: 2,
                ..
            }
        ),
        "{err:?}"
    );
    store.release_permit(&k, alice.permit_id).await.unwrap();
    must_grant(&*store, &k, 3, lease, "bob").await;
    assert_eq!(
        store
            .inspect_permits(&k)
            .await
            .unwrap()
            .expect("held")
            .limit,
        3
    );
}

/// Limits outside 1..=1024 are typed errors before anything is sent.
pub async fn semaphore_invalid_limits_are_rejected_before_any_request(ctx: Ctx) {
    let _ = ctx;
    for bad in [0, PermitLimit::MAX + 1, u32::MAX] {
        match PermitLimit::new(bad) {
            Err(LockError::InvalidArgument {
                name: "limit",
                reason,
            }) => {
                assert!(
                    reason.contains("1024"),
                    "the message must say the range: {reason}"
                )
            }
            other => panic!("limit {bad} must be refused, got {other:?}"),
        }
    }
    assert_eq!(limit(PermitLimit::MAX).get(), 1024);
    assert_eq!(limit(1).get(), 1);
}

/// A waiter for a full key gets the permit a holder releases; where the
/// backend notifies, the release itself wakes it (checked through the
/// signal, not a clock).
pub async fn semaphore_waiting_acquire_wakes_on_release(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let profile = ctx.profile().clone();
    let k = key("sem-wake");
    let lease = long_ttl(&ctx);
    let (alice, _) = must_grant(&*store, &k, 1, lease, "alice").await;
    if profile.release_notifications {
        let settle = store.permit_release_signal(&k).expect(
            "the profile says this backend notifies releases, but it gives no permit signal",
        );
        let _ = timeout(profile.tolerance, settle).await;
        let signal = store.permit_release_signal(&k).expect("a permit signal");
        must_refuse(&*store, &k, 1, lease, "bob").await;
        store.release_permit(&k, alice.permit_id).await.unwrap();
        timeout(HANG, signal)
            .await
            .unwrap_or_else(|_| panic!("the permit release signal did not fire within {HANG:?}"));
    } else {
        store.release_permit(&k, alice.permit_id).await.unwrap();
    }
    let client = ctx.semaphore_client().await.with_backoff(Backoff::new(
        Duration::from_millis(10),
        profile.short_ttl / 2,
    ));
    let holder = client
        .acquire(&k, limit(1), AcquireOptions::new(lease))
        .await
        .expect("the key is free");
    let waiter = {
        let client = client.clone();
        let k = k.clone();
        tokio::spawn(async move {
            client
                .acquire(&k, limit(1), AcquireOptions::new(lease).wait_up_to(HANG))
                .await
        })
    };
    // Let the waiter be refused at least once before the release.
    ctx.sleep(profile.short_ttl / 4).await;
    let held_fence = holder.fence();
    holder.release().await.unwrap();
    let got = timeout(HANG * 2, waiter)
        .await
        .expect("the waiter hung")
        .expect("the waiter panicked")
        .expect("the waiter got no permit after the release");
    assert!(got.fence() > held_fence);
    got.release().await.unwrap();
}

/// The waiters of one client take turns for a key's permits, as the
/// lock's do: only the front one asks while every permit is taken, and
/// each permit handed on costs at most three requests.
pub async fn semaphore_waiters_of_one_client_ask_in_turn(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let profile = ctx.profile().clone();
    let notified = profile.release_notifications;
    let waiters: usize = if notified { 12 } else { 4 };
    let k = key("sem-turns");
    let lease = long_ttl(&ctx);
    let (alice, _) = must_grant(&*store, &k, 2, lease, "alice").await;
    let (bob, _) = must_grant(&*store, &k, 2, lease, "bob").await;
    let counting = Arc::new(CountingSemaphores::new(Arc::clone(&store)));
    let client = Semaphore::from_arc(Arc::clone(&counting) as Arc<dyn SemaphoreStore>)
        .with_backoff(woken_by_release(&profile));
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let client = client.clone();
            let k = k.clone();
            tokio::spawn(async move {
                let permit = client
                    .acquire(&k, limit(2), AcquireOptions::new(lease).wait_up_to(HANG))
                    .await?;
                let fence = permit.fence();
                permit.release().await?;
                Ok::<_, LockError>(fence)
            })
        })
        .collect();
    counting.counts().until_tried(waiters).await;
    ctx.sleep(profile.tolerance).await;
    let asked_again = counting.counts().asked_again();
    assert!(
        asked_again <= 1,
        "{asked_again} waiters of one client asked again while every permit stayed taken; only the front one may"
    );
    let before = counting.counts().calls();
    store.release_permit(&k, alice.permit_id).await.unwrap();
    store.release_permit(&k, bob.permit_id).await.unwrap();
    let mut fences = HashSet::new();
    for task in tasks {
        let fence = timeout(HANG, task)
            .await
            .expect("a waiter was never given a permit")
            .unwrap()
            .unwrap();
        assert!(fences.insert(fence), "two waiters got fence {fence}");
    }
    if notified {
        let requests = counting.counts().calls() - before;
        assert!(
            requests <= 3 * waiters as u64,
            "{requests} requests for {waiters} permits handed on among {waiters} waiters of one client: more than 3 each"
        );
    }
}

/// A wait that runs out fails with `Timeout`, naming a holder.
pub async fn semaphore_waiting_acquire_times_out_naming_a_holder(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-timeout");
    let lease = long_ttl(&ctx);
    must_grant(&*store, &k, 2, lease, "alice").await;
    must_grant(&*store, &k, 2, lease, "bob").await;
    let client = ctx.semaphore_client().await;
    let outcome = client
        .acquire(
            &k,
            limit(2),
            AcquireOptions::new(lease).wait_up_to(ctx.profile().short_ttl / 4),
        )
        .await;
    match outcome {
        Err(LockError::Timeout {
            holder: Some(holder),
            ..
        }) => assert!(
            ["alice", "bob"].contains(&holder.owner()),
            "the timeout names {holder:?}"
        ),
        other => panic!("a full key must time out naming a holder, got {other:?}"),
    }
    assert!(
        client
            .try_acquire(&k, limit(2), lease)
            .await
            .unwrap()
            .is_none()
    );
}

/// The guard keeps its permit across many TTLs, and reports loss when the
/// permit is gone.
pub async fn semaphore_guard_renews_and_reports_loss(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let short = ctx.profile().short_ttl;
    let k = key("sem-guard");
    let client = ctx.semaphore_client().await;
    let guard = client
        .acquire(&k, limit(1), AcquireOptions::new(short * 2))
        .await
        .expect("a free permit");
    ctx.sleep(short * 5).await;
    assert!(!guard.is_lost(), "the guard lost a permit it kept renewing");
    assert_eq!(guard.check().unwrap(), guard.fence());
    must_refuse(&*store, &k, 1, short, "bob").await;
    // The permit goes behind the guard's back: its next renewal finds it gone.
    store.release_permit(&k, guard.permit_id()).await.unwrap();
    timeout(HANG, guard.lost())
        .await
        .expect("the guard never reported the lost permit");
    assert!(guard.is_lost() && guard.check().is_err());
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::NotHeld);
}

/// `with_permit` runs the work under a permit and releases it after.
pub async fn semaphore_with_permit_runs_work_and_releases(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let k = key("sem-with");
    let client = ctx.semaphore_client().await;
    let lease = long_ttl(&ctx);
    let inner = Arc::clone(&store);
    let inner_key = k.clone();
    let (fence, held) = client
        .with_permit(
            &k,
            limit(2),
            AcquireOptions::new(lease),
            |permit| async move {
                let held = inner.inspect_permits(&inner_key).await.unwrap();
                (permit.check().expect("trusted"), held)
            },
        )
        .await
        .unwrap();
    let held = held.expect("the work ran without a permit");
    assert_eq!(held.holders.len(), 1);
    assert_eq!(held.holders[0].fence(), fence);
    assert!(
        store.inspect_permits(&k).await.unwrap().is_none(),
        "with_permit left its permit behind"
    );
}

/// A key's semaphore and lock do not block each other; namespaces isolate
/// permits.
pub async fn semaphore_is_apart_from_the_lock_and_other_namespaces(ctx: Ctx) {
    let store = ctx.semaphore().await;
    let locks = ctx.store().await;
    let k = key("sem-apart");
    let lease = long_ttl(&ctx);
    must_grant(&*store, &k, 1, lease, "alice").await;
    must_acquire(&*locks, &k, lease, "bob").await;
    must_refuse(&*store, &k, 1, lease, "carol").await;
    let other = ctx.other_semaphore().await;
    must_grant(&*other, &k, 5, lease, "dave").await;
}

/// Many tasks race for one key's permits through the client, each writing
/// inside its section to a resource that counts who is inside: never more
/// than the limit inside at once, and no fence is ever handed out twice.
pub async fn semaphore_concurrent_holders_never_exceed_the_limit(ctx: Ctx) {
    const TASKS: usize = 8;
    const ROUNDS: u64 = 25;
    const LIMIT: u32 = 3;
    let store = ctx.semaphore().await;
    let k = key("sem-race");
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let fences = Arc::new(Mutex::new(HashSet::new()));
    let entries = Arc::new(AtomicU64::new(0));
    // Long enough that no permit expires mid-section on a loaded machine:
    // too many inside must mean a broken semaphore, not a slow test.
    let options = AcquireOptions::new(Duration::from_secs(60)).wait_up_to(HANG);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let client = Semaphore::from_arc(Arc::clone(&store)).with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(40),
        ));
        let (k, inside, most, fences, entries) = (
            k.clone(),
            Arc::clone(&inside),
            Arc::clone(&most),
            Arc::clone(&fences),
            Arc::clone(&entries),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let permit = client
                    .acquire_lease(&k, limit(LIMIT), options)
                    .await
                    .unwrap_or_else(|e| panic!("task {task}: acquire failed: {e}"));
                let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now_inside, Ordering::SeqCst);
                let fresh = fences
                    .lock()
                    .expect("not poisoned")
                    .insert(permit.fence().get());
                assert!(fresh, "fence {} was handed out twice", permit.fence());
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                entries.fetch_add(1, Ordering::SeqCst);
                client
                    .release(&permit)
                    .await
                    .unwrap_or_else(|e| panic!("task {task}: release failed: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
    assert_eq!(entries.load(Ordering::SeqCst), TASKS as u64 * ROUNDS);
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT,
        "{most} holders were inside at once; the limit is {LIMIT}"
    );
    tracing::info!(most, "most holders inside at once");
}
