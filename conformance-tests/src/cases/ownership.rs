//! Promise 2 and 7: only the holder's lease id renews or releases, and
//! repeating a release is harmless.

use lockstore_api::{LeaseId, ReleaseOutcome, RenewOutcome};

use super::{key, long_ttl, must_acquire, must_be_held, ttl};
use crate::Ctx;

/// Another client's live lease id on a different key cannot renew this one.
pub async fn foreign_lease_cannot_renew(ctx: Ctx) {
    let store = ctx.store().await;
    let (k, other) = (key("owned"), key("other"));
    let lease_ttl = long_ttl(&ctx);
    let (alice, fence) = must_acquire(&*store, &k, lease_ttl, "alice").await;
    let (bob, _) = must_acquire(&*store, &other, lease_ttl, "bob").await;
    assert_eq!(
        store.renew(&k, bob.lease_id, ttl(lease_ttl)).await.unwrap(),
        RenewOutcome::Lost
    );
    let holder = store.inspect(&k).await.unwrap().expect("still held");
    assert_eq!((holder.owner(), holder.fence()), ("alice", fence));
    assert_eq!(
        store
            .renew(&k, alice.lease_id, ttl(lease_ttl))
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
}

/// Another client's lease id cannot release this key.
pub async fn foreign_lease_cannot_release(ctx: Ctx) {
    let store = ctx.store().await;
    let (k, other) = (key("owned"), key("other"));
    let lease_ttl = long_ttl(&ctx);
    let (alice, fence) = must_acquire(&*store, &k, lease_ttl, "alice").await;
    let (bob, _) = must_acquire(&*store, &other, lease_ttl, "bob").await;
    assert_eq!(
        store.release(&k, bob.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    let holder = must_be_held(&*store, &k, lease_ttl, "carol").await;
    assert_eq!(holder.fence(), fence);
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// A made-up lease id neither renews nor releases, and the holder is untouched.
pub async fn forged_lease_id_changes_nothing(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("forged");
    let lease_ttl = long_ttl(&ctx);
    let (_alice, fence) = must_acquire(&*store, &k, lease_ttl, "alice").await;
    for forged in [
        LeaseId::random(),
        LeaseId::from_u128(0),
        LeaseId::from_u128(u128::MAX),
    ] {
        assert_eq!(
            store.renew(&k, forged, ttl(lease_ttl)).await.unwrap(),
            RenewOutcome::Lost
        );
        assert_eq!(
            store.release(&k, forged).await.unwrap(),
            ReleaseOutcome::NotHeld
        );
    }
    let holder = store.inspect(&k).await.unwrap().expect("still held");
    assert_eq!((holder.owner(), holder.fence()), ("alice", fence));
    // A forged id on a free key changes nothing either.
    let free = key("forged-free");
    assert_eq!(
        store.release(&free, LeaseId::random()).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(store.inspect(&free).await.unwrap(), None);
}

/// After a takeover, the old holder's id can neither renew nor release the
/// new holder's lease.
pub async fn stale_lease_cannot_touch_the_new_holder(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("stale");
    let short = ctx.profile().short_ttl;
    let (alice, _) = must_acquire(&*store, &k, short, "alice").await;
    ctx.watch_lease(&*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    let (_bob, bob_fence) = must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
    assert_eq!(
        store.renew(&k, alice.lease_id, ttl(short)).await.unwrap(),
        RenewOutcome::Lost
    );
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    let holder = store.inspect(&k).await.unwrap().expect("bob still holds");
    assert_eq!((holder.owner(), holder.fence()), ("bob", bob_fence));
}

/// Releasing twice answers `NotHeld` the second time and breaks nothing.
pub async fn double_release_is_harmless(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("double");
    let (alice, _) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    let (bob, _) = must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
    // Alice's late duplicate must not free Bob's lease.
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    must_be_held(&*store, &k, long_ttl(&ctx), "carol").await;
    assert_eq!(
        store.release(&k, bob.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// Releasing a lease that already expired is `NotHeld`, not an error.
pub async fn release_after_expiry_is_harmless(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("release-expired");
    let (alice, _) = must_acquire(&*store, &k, ctx.profile().short_ttl, "alice").await;
    ctx.sleep_past_short_ttl().await;
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
}
