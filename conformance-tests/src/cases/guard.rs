//! The client's guard: background renewal, loss signal, release and drop.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, LockClient, LockError, LockStore, ReleaseOutcome};
use tokio::time::{Instant, timeout};

use super::{HANG, key, long_ttl, must_be_held, request};
use crate::Ctx;
use crate::fault::{PanickingStore, PartitionableStore};

/// A guard renews its lease so it outlives many TTLs.
pub async fn guard_keeps_lease_alive_across_many_ttls(ctx: Ctx) {
    let client = ctx.client().await;
    // Renewal must get through within a TTL, on a machine that may be busy
    // (a single-threaded emulator serving every other case at once): a TTL
    // of at least 4 s leaves each renewal seconds, not milliseconds.
    let ttl = (ctx.profile().short_ttl * 4).max(Duration::from_secs(4));
    let guard = client
        .acquire("kept-alive", AcquireOptions::new(ttl))
        .await
        .unwrap();
    ctx.sleep(ttl * 3).await;
    assert!(!guard.is_lost(), "a renewing guard lost its lease");
    let holder = must_be_held(&**client.store(), guard.key(), ttl, "bob").await;
    assert_eq!(holder.fence(), guard.fence());
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
}

/// `release().await` frees the key for the next caller.
pub async fn guard_release_frees_the_key(ctx: Ctx) {
    let client = ctx.client().await;
    let guard = client
        .acquire("guard-release", AcquireOptions::new(long_ttl(&ctx)))
        .await
        .unwrap();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    let next = client
        .try_acquire("guard-release", long_ttl(&ctx))
        .await
        .unwrap();
    assert!(next.is_some(), "a released key was not free");
}

/// Dropping a guard releases the key in the background, long before its TTL.
pub async fn dropped_guard_releases_the_key(ctx: Ctx) {
    let client = ctx.client().await;
    let guard = client
        .acquire("guard-drop", AcquireOptions::new(beyond_stalls(&ctx)))
        .await
        .unwrap();
    drop(guard);
    // A hang bound, long before the TTL: a guard that left the key to
    // expire fails here, a slow machine does not.
    let started = Instant::now();
    loop {
        if client
            .try_acquire("guard-drop", long_ttl(&ctx))
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < HANG,
            "a dropped guard did not release its key within {HANG:?}"
        );
        ctx.sleep(ctx.profile().short_ttl / 4).await;
    }
}

/// When a renewal finds the lease gone, the guard says so at once — well
/// before its local deadline would have.
pub async fn guard_signals_loss_when_renewal_finds_lease_gone(ctx: Ctx) {
    // The first renewal comes after a short TTL, the deadline after over
    // 3 × HANG: only a hang, not a busy machine, can delay the renewal's
    // answer past it.
    let lease_ttl = beyond_stalls(&ctx);
    let client = ctx
        .client()
        .await
        .with_renewals_per_ttl(renewals_every(lease_ttl, ctx.profile().short_ttl));
    let guard = client
        .acquire(
            "lost-by-renewal",
            AcquireOptions::new(lease_ttl).wait_up_to(HANG),
        )
        .await
        .unwrap();
    // Someone with the id (an operator, a bug) frees it behind the guard's back.
    client
        .store()
        .release(guard.key(), guard.lease_id())
        .await
        .unwrap();
    timeout(HANG, guard.lost())
        .await
        .expect("the guard never noticed that the lease was gone");
    // Judged by the guard's own deadline: lost before it, so by the answer.
    assert!(
        Instant::now() < guard.trusted_until(),
        "the guard noticed only at its deadline, not at its next renewal, that the lease was gone"
    );
    assert!(guard.is_lost());
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::NotHeld);
}

/// A holder cut off from the backend stops trusting its lease before anyone
/// else can take the key (promise 4).
pub async fn guard_signals_loss_before_takeover_when_partitioned(ctx: Ctx) {
    let store = ctx.store().await;
    let partitioned = Arc::new(PartitionableStore::new(Arc::clone(&store)));
    let holder_client = LockClient::from_arc(Arc::clone(&partitioned));
    let short = ctx.profile().short_ttl;
    let k = key("partitioned");
    let guard = holder_client
        .acquire(&k, AcquireOptions::new(short).wait_up_to(HANG))
        .await
        .unwrap();
    partitioned.cut();
    let lost = guard.lost();
    let give_up = Instant::now() + HANG;
    // When the takeover's reply arrives, the server has granted the key:
    // by then the guard must already distrust its lease. Both checks read
    // the guard's own deadline, not when a task happened to be scheduled.
    let taken_at = loop {
        let attempt = store
            .try_acquire(&request(&k, long_ttl(&ctx), "bob"))
            .await
            .unwrap();
        if matches!(attempt, lockstore_api::AcquireOutcome::Acquired { .. }) {
            break Instant::now();
        }
        assert!(
            Instant::now() < give_up,
            "the partitioned lease never expired"
        );
        ctx.sleep(short / 40).await;
    };
    assert!(
        guard.is_lost(),
        "the key was taken over while the cut-off guard still believed it held it"
    );
    assert!(
        guard.trusted_until() <= taken_at,
        "the guard trusted its lease until {:?}, after the takeover at {taken_at:?}",
        guard.trusted_until()
    );
    assert!(
        guard.check().is_err(),
        "check() handed out the fence of a lost lease"
    );
    // `lost()` has its own timer on the deadline, which has passed.
    timeout(short * 4, lost)
        .await
        .expect("lost() never resolved although the guard's deadline had passed");
    drop(guard);
}

/// `with_lock` drops the work and fails with `LeaseLost` when the lease is
/// lost midway, instead of letting it run unprotected.
pub async fn with_lock_stops_work_when_lease_is_lost(ctx: Ctx) {
    let store: Arc<dyn LockStore> = ctx.store().await;
    let partitioned = Arc::new(PartitionableStore::new(store));
    let client = LockClient::from_arc(Arc::clone(&partitioned));
    let short = ctx.profile().short_ttl;
    let cut = Arc::clone(&partitioned);
    // Only a hang fails: work whose lease was lost runs on forever.
    let outcome = timeout(
        HANG * 2,
        client.with_lock(
            "with-lock-lost",
            AcquireOptions::new(short).wait_up_to(HANG),
            |_lease| async move {
                cut.cut();
                std::future::pending::<()>().await;
            },
        ),
    )
    .await
    .expect("with_lock kept waiting on work whose lease was lost");
    assert!(
        matches!(outcome, Err(LockError::LeaseLost { .. })),
        "{outcome:?}"
    );
}

/// `with_lock` runs the work with the fence and releases afterwards.
pub async fn with_lock_runs_work_and_releases(ctx: Ctx) {
    let client = ctx.client().await;
    let fence = client
        .with_lock(
            "with-lock",
            AcquireOptions::new(long_ttl(&ctx)),
            |lease| async move {
                assert!(!lease.cancellation_token().is_cancelled());
                lease.fence()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        client.inspect("with-lock").await.unwrap(),
        None,
        "with_lock left the key held"
    );
    let again = client
        .acquire("with-lock", AcquireOptions::new(long_ttl(&ctx)))
        .await
        .unwrap();
    assert!(again.fence() > fence);
    again.release().await.unwrap();
}

/// A holder that was paused or starved past its deadline — its renewal task
/// did not run — sees the loss the moment it looks, before yielding once:
/// `is_lost()`, `check()`, the handle and `lost()` all judge the deadline
/// themselves (M1).
pub async fn guard_reports_loss_by_its_deadline_when_starved(ctx: Ctx) {
    let store = ctx.store().await;
    let partitioned = Arc::new(PartitionableStore::new(store));
    let client = LockClient::from_arc(Arc::clone(&partitioned));
    let short = ctx.profile().short_ttl;
    let guard = client
        .acquire("starved", AcquireOptions::new(short).wait_up_to(HANG))
        .await
        .unwrap();
    let handle = guard.handle();
    // Nothing says the lease is still trusted here: with a short TTL, a busy
    // machine may read the acquire's reply past the guard's deadline. What
    // a guard that does trust it must hand out is its own fence.
    if let Ok(fence) = guard.check() {
        assert_eq!(fence, guard.fence());
    }
    // No renewal can confirm, even if another worker runs the task.
    partitioned.cut();
    ctx.stall(short + ctx.profile().tolerance);
    assert!(
        guard.is_lost(),
        "a guard past its deadline still trusts its lease"
    );
    assert!(matches!(guard.check(), Err(LockError::LeaseLost { .. })));
    assert!(handle.is_lost() && handle.check().is_err());
    assert!(
        futures::FutureExt::now_or_never(guard.lost()).is_some(),
        "lost() did not resolve although the deadline had passed"
    );
    assert!(handle.cancellation_token().is_cancelled());
}

/// A guard whose background task died (here: the store panicked on
/// renewal) reports the loss at once, not only at its deadline (M2).
pub async fn guard_reports_loss_when_its_task_dies(ctx: Ctx) {
    let store = ctx.store().await;
    // Between the panic and the loss signal run the panic hook (with
    // RUST_BACKTRACE set, it symbolizes a backtrace of the test binary) and
    // the unwinding; at load average 8, a 9 s deadline (this case's TTL on
    // Redis before) was once passed before the test saw the loss. The first
    // renewal (the panic) comes at a twentieth of the usual long TTL.
    let lease_ttl = beyond_stalls(&ctx);
    let client = LockClient::from_arc(Arc::new(PanickingStore::new(store)))
        .with_renewals_per_ttl(renewals_every(lease_ttl, long_ttl(&ctx) / 20));
    let guard = client
        .acquire("task-dies", AcquireOptions::new(lease_ttl))
        .await
        .unwrap();
    timeout(HANG, guard.lost())
        .await
        .expect("the renewal task died and the guard never reported the loss");
    assert!(
        Instant::now() < guard.trusted_until(),
        "the renewal task died and the guard kept trusting its lease until its deadline"
    );
    assert!(guard.is_lost());
    drop(guard);
}

/// A lease TTL whose deadline no busy machine reaches within a case: at
/// least 4 × [`HANG`] (the default safety margin leaves the deadline over
/// 3 × `HANG` away). A case that must tell an event before the deadline from
/// the deadline itself uses it, so that only a hang can fail it.
fn beyond_stalls(ctx: &Ctx) -> Duration {
    long_ttl(ctx).max(HANG * 4)
}

/// The renewals per TTL that make a guard renew every `every`.
fn renewals_every(ttl: Duration, every: Duration) -> u32 {
    u32::try_from(ttl.as_millis().div_ceil(every.as_millis().max(1))).unwrap_or(u32::MAX)
}
