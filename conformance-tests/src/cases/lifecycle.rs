//! Acquire, inspect, renew, release and expiry.

use std::time::Duration;

use lockstore_api::{AcquireOutcome, ReleaseOutcome, RenewOutcome};
use tokio::time::Instant;

use super::{key, long_ttl, must_acquire, must_be_held, request, surely_live, ttl};
use crate::Ctx;

/// Promise 1: a free key can be acquired, is then held, and is free again
/// after release.
pub async fn lifecycle_acquire_inspect_release(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("lifecycle");
    let (lease, fence) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
    let holder = store
        .inspect(&k)
        .await
        .unwrap()
        .expect("an acquired key is held");
    assert_eq!(holder.fence(), fence);
    assert_eq!(
        store.release(&k, lease.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.inspect(&k).await.unwrap(),
        None,
        "a released key is free"
    );
}

/// `inspect` of a key nobody ever took answers `None`, not an error.
pub async fn free_key_has_no_holder(ctx: Ctx) {
    let store = ctx.store().await;
    assert_eq!(store.inspect(&key("never-taken")).await.unwrap(), None);
}

/// Promise 6: a refused acquire names the holder, its token and time left,
/// and `inspect` agrees.
pub async fn held_key_reports_its_holder(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("reports");
    let lease_ttl = long_ttl(&ctx);
    let sent = tokio::time::Instant::now();
    let (_lease, fence) = must_acquire(&*store, &k, lease_ttl, "alice@host-1").await;
    let holder = must_be_held(&*store, &k, lease_ttl, "bob").await;
    let elapsed = sent.elapsed();
    assert_eq!(holder.owner(), "alice@host-1");
    assert_eq!(holder.fence(), fence);
    assert!(
        holder.expires_in() <= lease_ttl + ctx.profile().tolerance,
        "time left {:?} exceeds the TTL {lease_ttl:?}",
        holder.expires_in()
    );
    // The server started counting no earlier than `sent` and answered no
    // later than now; allow the profile's tolerance and 1 ms of clock
    // granularity, nothing more.
    let floor =
        lease_ttl.saturating_sub(elapsed + ctx.profile().tolerance + Duration::from_millis(1));
    assert!(
        holder.expires_in() >= floor,
        "time left {:?} is below the {floor:?} a {lease_ttl:?} lease granted {elapsed:?} ago must have",
        holder.expires_in()
    );
    let inspected = store.inspect(&k).await.unwrap().expect("held");
    assert_eq!(inspected.owner(), "alice@host-1");
    assert_eq!(inspected.fence(), fence);
}

/// A release makes the key available to the next caller immediately.
pub async fn release_frees_the_key_at_once(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("release-frees");
    let (lease, _) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
    store.release(&k, lease.lease_id).await.unwrap();
    must_acquire(&*store, &k, long_ttl(&ctx), "bob").await;
}

/// Promise 4: a lease not renewed within its TTL can be taken over.
pub async fn expiry_allows_takeover(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("expiry");
    let short = ctx.profile().short_ttl;
    let sent = Instant::now();
    must_acquire(&*store, &k, short, "alice").await;
    // Still held — where that is decided: the server granted no earlier
    // than `sent` and answered Bob no later than his reply arrived. On a
    // machine too slow for that, Bob's outcome is not the contract's to say.
    let attempt = store.try_acquire(&request(&k, short, "bob")).await.unwrap();
    if surely_live(&ctx, sent, short, Instant::now()) {
        assert!(
            matches!(attempt, AcquireOutcome::Held(_)),
            "mutual exclusion broken: bob acquired a live lease ({attempt:?})"
        );
    }
    ctx.sleep_past_short_ttl().await;
    assert_eq!(
        store.inspect(&k).await.unwrap(),
        None,
        "expired lease still reported"
    );
    must_acquire(&*store, &k, short, "bob").await;
}

/// Renewing before expiry keeps the key held well past the first TTL.
///
/// Each outcome is asserted where the contract decides it: a renewal (or
/// Bob's attempt) whose reply arrived within the TTL (less the tolerance)
/// of the last confirmed request's send met a live lease. A round in which
/// the machine was too slow for that starts over.
pub async fn renew_extends_the_lease(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("renew");
    let short = ctx.profile().short_ttl;
    'rounds: for _ in 0..10 {
        let mut confirmed = Instant::now();
        let (lease, _) = must_acquire(&*store, &k, short, "alice").await;
        for _ in 0..4 {
            // Due half a TTL after the last confirmed request was *sent*,
            // not after its reply: the lease runs from the request, and a
            // slow reply must not eat the rest of it first.
            let due = confirmed + short / 2;
            ctx.sleep(due.saturating_duration_since(Instant::now()))
                .await;
            let sent = Instant::now();
            let outcome = store.renew(&k, lease.lease_id, ttl(short)).await.unwrap();
            match outcome {
                RenewOutcome::Renewed => confirmed = sent,
                RenewOutcome::Lost if !surely_live(&ctx, confirmed, short, Instant::now()) => {
                    continue 'rounds;
                }
                RenewOutcome::Lost => panic!("a live lease must renew"),
            }
        }
        // Twice the TTL has passed since the acquisition: only renewals hold it.
        let attempt = store.try_acquire(&request(&k, short, "bob")).await.unwrap();
        match attempt {
            AcquireOutcome::Held(_) => return,
            AcquireOutcome::Acquired { .. }
                if !surely_live(&ctx, confirmed, short, Instant::now()) =>
            {
                // Bob's lease expires before the next round's acquire.
                ctx.sleep_past_short_ttl().await;
            }
            AcquireOutcome::Acquired { fence } => {
                panic!("mutual exclusion broken: bob acquired a renewed lease (fence {fence})")
            }
        }
    }
    panic!("ten rounds in a row were too slow to tell whether renewals work");
}

/// Promise 2: an expired lease cannot be renewed back to life.
pub async fn renew_after_expiry_is_lease_lost(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("renew-expired");
    let short = ctx.profile().short_ttl;
    let (lease, _) = must_acquire(&*store, &k, short, "alice").await;
    ctx.watch_lease(&*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    assert_eq!(
        store.renew(&k, lease.lease_id, ttl(short)).await.unwrap(),
        RenewOutcome::Lost
    );
    must_acquire(&*store, &k, short, "bob").await;
}

/// Promise 7: an acquire retried with the same lease id (its first reply was
/// lost) finds its own grant: same token, still one holder, with the
/// retry's owner label (an election publishes its value this way).
pub async fn retried_acquire_with_same_lease_id_keeps_the_lease(ctx: Ctx) {
    let store = ctx.store().await;
    let k = key("retry");
    let (request, fence) = must_acquire(&*store, &k, long_ttl(&ctx), "alice").await;
    // Retry a while later: the client stamps the lease with the retry's send
    // time, so the retry must restart the TTL, not keep the first expiry.
    ctx.sleep(ctx.profile().short_ttl).await;
    let retry_sent = tokio::time::Instant::now();
    // The retry carries another label (an election's proclamation does
    // this): the store keeps the newest.
    let mut request = request;
    request.owner = lockstore_api::OwnerLabel::new("alice, again").unwrap();
    match store.try_acquire(&request).await.unwrap() {
        lockstore_api::AcquireOutcome::Acquired { fence: again } => assert_eq!(again, fence),
        other => panic!("a retried acquire by the holder was refused: {other:?}"),
    }
    let holder = must_be_held(&*store, &k, long_ttl(&ctx), "bob").await;
    assert_eq!(
        holder.owner(),
        "alice, again",
        "a retried acquire by the holder did not store its owner label"
    );
    let floor = long_ttl(&ctx)
        .saturating_sub(retry_sent.elapsed() + ctx.profile().tolerance + Duration::from_millis(1));
    assert!(
        holder.expires_in() >= floor,
        "the retried acquire did not restart the TTL: {:?} left, at least {floor:?} expected",
        holder.expires_in()
    );
    assert_eq!(
        store.release(&k, request.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// Without an explicit owner, a lease is labelled `host/pid-N/task-M`, so a
/// person can find the process and task that holds a key.
pub async fn default_owner_label_names_process_and_task(ctx: Ctx) {
    let client = ctx.client().await;
    let guard = tokio::spawn(async move {
        client
            .acquire(
                "labelled",
                lockstore_api::AcquireOptions::new(std::time::Duration::from_secs(30)),
            )
            .await
            .map(|guard| (guard, client))
    })
    .await
    .unwrap()
    .unwrap();
    let (guard, client) = guard;
    let holder = client.inspect("labelled").await.unwrap().expect("held");
    let expected = format!("/pid-{}/task-", std::process::id());
    assert!(
        holder.owner().contains(&expected),
        "owner label {:?} lacks {expected:?}",
        holder.owner()
    );
    guard.release().await.unwrap();
}
