//! Waiting acquires: no wait, timeouts, wake-up on release, takeover on expiry,
//! and the waiters of one client taking turns.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, AcquireOutcome, LockClient, LockError, LockStore, OwnerLabel};
use tokio::time::{Instant, timeout};

use super::{HANG, key, long_ttl, must_acquire, request, woken_by_release};
use crate::Ctx;
use crate::fault::CountingStore;

/// A non-waiting acquire of a held key fails at once with the holder's name.
pub async fn no_wait_acquire_fails_fast_naming_the_holder(ctx: Ctx) {
    let alice = ctx
        .client()
        .await
        .with_owner(OwnerLabel::new("alice@etl-1").unwrap());
    let bob = ctx.client().await;
    let guard = alice
        .acquire("busy", AcquireOptions::new(long_ttl(&ctx)))
        .await
        .unwrap();
    match bob
        .acquire("busy", AcquireOptions::new(long_ttl(&ctx)))
        .await
    {
        Err(LockError::Timeout {
            holder: Some(holder),
            ..
        }) => {
            assert_eq!(holder.owner(), "alice@etl-1");
            assert_eq!(holder.fence(), guard.fence());
        }
        other => panic!("expected a timeout naming alice, got {other:?}"),
    }
    assert!(
        bob.try_acquire("busy", long_ttl(&ctx))
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
}

/// A bounded wait on a key that stays held ends with `Timeout` after the wait.
pub async fn waiting_acquire_times_out_naming_the_holder(ctx: Ctx) {
    let client = ctx.client().await;
    let guard = client
        .acquire("held-long", AcquireOptions::new(long_ttl(&ctx)))
        .await
        .unwrap();
    let wait = ctx.profile().short_ttl;
    let started = Instant::now();
    let err = client
        .acquire(
            "held-long",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(wait),
        )
        .await
        .unwrap_err();
    match err {
        LockError::Timeout { waited, holder, .. } => {
            assert!(waited >= wait, "gave up after {waited:?}, before {wait:?}");
            assert_eq!(holder.expect("holder reported").fence(), guard.fence());
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(started.elapsed() >= wait);
    guard.release().await.unwrap();
}

/// A blocked waiter gets the key promptly after a release: by notification
/// where the backend has one, else by its backoff.
///
/// The bound is generous — a busy machine may take seconds to deliver a
/// notification or run a poll — and still tells the mechanisms apart: the
/// holder's lease lasts an hour, so nothing but the release can end the
/// wait in time; a notified waiter backs off for up to an hour (one that
/// ignored the notification would pass by luck 0.3% of the time, and the
/// signal itself is checked first), a polling one for at most half a TTL.
pub async fn waiting_acquire_wakes_promptly_on_release(ctx: Ctx) {
    let profile = ctx.profile().clone();
    let bound = Duration::from_secs(10);
    let lease = Duration::from_secs(3600);
    let backoff = woken_by_release(&profile);
    if profile.release_notifications {
        // The hand-off below can pass by luck when notifications are broken
        // (a jittered 30 s backoff lands under the bound now and then), so
        // first check the signal itself: one that never fires fails here.
        // As the client does: subscribe, try, get refused, then the
        // holder's release must fire the signal (a backend may publish only
        // releases that a refused waiter asked for).
        let store = ctx.store().await;
        let k = key("handoff-signal");
        let (lease, _) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
        // A listener that starts on first use wakes every waiter once it is
        // subscribed (a release may have gone unheard before): let that
        // early wake-up pass first, so it cannot stand in for the release's.
        let settle = store
            .release_signal(&k)
            .expect("the profile says this backend notifies releases, but it gives no signal");
        let _ = timeout(profile.tolerance, settle).await;
        let signal = store
            .release_signal(&k)
            .expect("the profile says this backend notifies releases, but it gives no signal");
        let refused = request(&k, long_ttl(&ctx), "bob");
        assert!(
            matches!(
                store.try_acquire(&refused).await.unwrap(),
                AcquireOutcome::Held(_)
            ),
            "bob got a held key"
        );
        store.release(&k, lease.lease_id).await.unwrap();
        timeout(bound, signal).await.unwrap_or_else(|_| {
            panic!("the release signal did not fire within {bound:?} of the release")
        });
    }
    let holder = ctx.client().await;
    let waiter = ctx.client().await.with_backoff(backoff);
    let guard = holder
        .acquire("handoff", AcquireOptions::new(lease).wait_up_to(HANG))
        .await
        .unwrap();
    let options = AcquireOptions::new(long_ttl(&ctx)).wait_forever();
    let waiting = tokio::spawn(async move { waiter.acquire("handoff", options).await });
    // Let the waiter fail its first attempt and settle into waiting (not
    // needed for any assertion).
    ctx.sleep(profile.short_ttl / 4).await;
    assert!(!waiting.is_finished(), "the waiter got a held key");
    let released_at = Instant::now();
    guard.release().await.unwrap();
    let next = timeout(bound, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!("the waiter was not handed the key within {bound:?} of the release")
        })
        .unwrap()
        .unwrap();
    let handoff = released_at.elapsed();
    tracing::info!(?handoff, "hand-off");
    next.release().await.unwrap();
}

/// A waiter takes over a key whose holder vanished, once the lease expires.
pub async fn waiting_acquire_takes_over_after_expiry(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("abandoned");
    let (_crashed, old_fence) = must_acquire(&*store, &k, ctx.profile().short_ttl, "crashed").await;
    let client = ctx.client().await;
    // Only a hang is a failure: how soon the waiter's poll comes round
    // after the expiry depends on the machine's load.
    let guard = client
        .acquire(&k, AcquireOptions::new(long_ttl(&ctx)).wait_up_to(HANG))
        .await
        .expect("the abandoned lock was never taken over");
    assert!(guard.fence() > old_fence);
    guard.release().await.unwrap();
}

/// Waiters of one client take turns: only the one at the front of the line
/// asks the store, so with many waiters a hand-off costs at most three
/// requests (the release, the winner's attempt, and the refused attempt of
/// the next waiter, which asks to be told of the new holder's release).
pub async fn waiters_of_one_client_ask_in_turn(ctx: Ctx) {
    let profile = ctx.profile().clone();
    let notified = profile.release_notifications;
    // Without notifications the front polls, and each hand-off waits for
    // its backoff: fewer waiters keep the case short.
    let waiters: usize = if notified { 16 } else { 4 };
    let (counting, client) = counted_waiters(&ctx).await;
    let holder = ctx
        .client()
        .await
        .acquire(
            "turns",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(HANG),
        )
        .await
        .unwrap();
    let options = AcquireOptions::new(long_ttl(&ctx)).wait_up_to(HANG);
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let guard = client.acquire("turns", options).await?;
                let fence = guard.fence();
                guard.release().await?;
                Ok::<_, LockError>(fence)
            })
        })
        .collect();
    counting.counts().until_tried(waiters).await;
    // Let the front ask again (it polls, or is woken by a listener that
    // just subscribed): the others must not.
    ctx.sleep(profile.tolerance).await;
    let asked_again = counting.counts().asked_again();
    assert!(
        asked_again <= 1,
        "{asked_again} waiters of one client asked again while the key stayed held; only the front one may"
    );
    let before = counting.calls();
    holder.release().await.unwrap();
    let mut fences = Vec::new();
    for task in tasks {
        let fence = timeout(HANG, task)
            .await
            .expect("a waiter was never handed the key")
            .unwrap()
            .unwrap();
        fences.push(fence);
    }
    fences.sort();
    fences.dedup();
    assert_eq!(fences.len(), waiters, "two waiters got one fence");
    if notified {
        let requests = counting.calls() - before;
        assert!(
            requests <= 3 * waiters as u64,
            "{requests} requests for {waiters} hand-offs among {waiters} waiters of one client: more than 3 per hand-off"
        );
    }
}

/// A client over a [`CountingStore`] of the case's store, whose waiters
/// a release must wake ([`woken_by_release`]).
async fn counted_waiters(ctx: &Ctx) -> (Arc<CountingStore>, LockClient) {
    let counting = Arc::new(CountingStore::new(ctx.store().await));
    let client = LockClient::from_arc(Arc::clone(&counting) as Arc<dyn LockStore>)
        .with_backoff(woken_by_release(ctx.profile()));
    (counting, client)
}

/// A waiter cancelled at the front of its client's line hands the turn on:
/// the waiter behind it is not left asleep when the key is released.
pub async fn a_cancelled_front_waiter_passes_the_turn_on(ctx: Ctx) {
    // Where releases are notified, a lost turn would leave the second
    // waiter asleep past HANG.
    let (counting, client) = counted_waiters(&ctx).await;
    let holder = ctx
        .client()
        .await
        .acquire(
            "turn-on",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(HANG),
        )
        .await
        .unwrap();
    let options = AcquireOptions::new(long_ttl(&ctx)).wait_forever();
    let spawn =
        |client: LockClient| tokio::spawn(async move { client.acquire("turn-on", options).await });
    let front = spawn(client.clone());
    counting.counts().until_tried(1).await;
    let second = spawn(client.clone());
    counting.counts().until_tried(2).await;
    // The second waiter is in line behind the first (it was refused, and
    // the first holds the turn). Cancel the first.
    front.abort();
    assert!(front.await.is_err(), "the first waiter was cancelled");
    holder.release().await.unwrap();
    let guard = timeout(HANG, second)
        .await
        .expect("the waiter behind a cancelled one was never handed the key")
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
}
