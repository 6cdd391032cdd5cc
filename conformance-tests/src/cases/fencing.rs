//! Promise 3: fencing tokens strictly increase per key.

use lockstore_api::RenewOutcome;

use super::{key, long_ttl, must_acquire, ttl};
use crate::Ctx;

/// The next holder after a release gets a larger token.
pub async fn fence_increases_after_release(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("fence-release");
    let (alice, first) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
    store.release(&k, alice.lease_id).await.unwrap();
    let (_bob, second) = must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
    assert!(
        second > first,
        "fence went from {first} to {second} after release"
    );
}

/// The next holder after an expiry takeover gets a larger token.
pub async fn fence_increases_after_expiry_takeover(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("fence-expiry");
    let (_alice, first) = must_acquire(&*store, &k, ctx.profile().short_ttl, "alice").await;
    ctx.watch_lease(&*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    let (_bob, second) = must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
    assert!(
        second > first,
        "fence went from {first} to {second} after takeover"
    );
}

/// Renewal keeps the token; the next acquisition still gets a larger one.
pub async fn fence_unchanged_by_renewal(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("fence-renew");
    let lease_ttl = long_ttl(&ctx);
    let (alice, first) = must_acquire(&*store, &k, lease_ttl, "alice").await;
    for _ in 0..3 {
        assert_eq!(
            store
                .renew(&k, alice.lease_id, ttl(lease_ttl))
                .await
                .unwrap(),
            RenewOutcome::Renewed
        );
    }
    let holder = store.inspect(&k).await.unwrap().expect("held");
    assert_eq!(holder.fence(), first, "renewal changed the fence");
    store.release(&k, alice.lease_id).await.unwrap();
    let (_bob, second) = must_acquire(&*store, &k, lease_ttl, "bob").await;
    assert!(second > first);
}

/// Tokens strictly increase over many cycles, interleaved with another key.
pub async fn fence_strictly_increases_over_many_cycles(ctx: Ctx) {
    let store = ctx.store().await;
    let (k, other) = (key("fence-cycles"), key("fence-cycles-other"));
    let mut last = None;
    for i in 0..25 {
        let (lease, fence) =
            must_acquire(&*store, &k, long_ttl(&ctx), &format!("worker-{i}")).await;
        if let Some(last) = last {
            assert!(fence > last, "cycle {i}: fence {fence} after {last}");
        }
        last = Some(fence);
        let (noise, _) = must_acquire(&*store, &other, long_ttl(&ctx), "noise").await;
        store.release(&other, noise.lease_id).await.unwrap();
        store.release(&k, lease.lease_id).await.unwrap();
    }
}
