//! Waiting acquires: no wait, timeouts, wake-up on release, takeover on expiry.

use std::time::Duration;

use lockstore_api::{AcquireOptions, AcquireOutcome, Backoff, LockError, OwnerLabel};
use tokio::time::{Instant, timeout};

use super::{HANG, key, long_ttl, must_acquire, request};
use crate::Ctx;

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
    let backoff = if profile.release_notifications {
        Backoff::new(lease, lease)
    } else {
        Backoff::new(Duration::from_millis(10), profile.short_ttl / 2)
    };
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
