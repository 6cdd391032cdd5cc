//! Network faults between a permit holder and its server, through a
//! [`FaultProxy`], as the lock's fault-proxy cases (`cases/network.rs`)
//! play them — for two of their faults, and for a lost acquire reply.
//!
//! A cut-off holder plays the lock's story with permits: a renewing
//! [`PermitGuard`](lockstore_api::semaphore::PermitGuard) behind the proxy,
//! a healthy client holding every other permit, the fault switched on, a
//! taker on a healthy path that can only get the holder's expired permit —
//! when its reply arrives the guard must already distrust its permit by its
//! own deadline — retryable failures through the broken path, and a waiter
//! behind it that gets a permit once the fault heals, with a fence above
//! every earlier one.
//!
//! Backends without a network (memory, SQLite) and the Redis Cluster (whose
//! nodes the client reaches past any proxy) are checked as the lock's cases
//! check them ([`network_applies`]).

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::semaphore::{PermitOutcome, PermitRequest, Semaphore, SemaphoreStore};
use lockstore_api::{AcquireOptions, Backoff, FencingToken, LockError, LockKey, ReleaseOutcome};
use tokio::time::{Instant, timeout};

use super::{limit, must_grant, must_refuse, permit_request};
use crate::Ctx;
use crate::cases::network::{Fault, bounded, network_applies, switch_on};
use crate::cases::{HANG, assert_retryable_failure, key, long_ttl, surely_live};
use crate::proxy::{Direction, FaultProxy, Flow};

/// A permit holder behind a blackhole loses its permit by its own
/// deadline, never after another client took it; calls through the
/// blackhole fail as retryable errors; once it heals, a waiter behind it
/// gets a permit with a higher fence.
pub async fn semaphore_network_blackhole_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::Blackhole).await;
}

/// As the blackhole case, for a half-open path whose replies are lost: the
/// holder's renewals still extend its permit on the server, yet its guard,
/// hearing nothing, must stop trusting it by its deadline.
pub async fn semaphore_network_half_open_losing_replies_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::RepliesLost).await;
}

/// An acquire whose reply is lost after the server granted it, retried with
/// the same permit id once the path heals, holds **one** permit — its own,
/// with the fence the lost reply carried — and its release frees it.
///
/// Every backend but DynamoDB acquires in one request, so the server grants
/// while the reply is stalled and the case waits to see that grant. A
/// DynamoDB acquire reads before it writes: the read's reply is what gets
/// lost, nothing is written, and the retry is a first grant there (the
/// retry of a granted request is `semaphore_retried_acquire_…`'s).
pub async fn semaphore_network_lost_acquire_reply_leaves_one_permit(ctx: Ctx) {
    if !network_applies(&ctx).await {
        return;
    }
    let short = ctx.profile().short_ttl;
    let request_timeout = ctx.profile().request_timeout;
    let proxy = FaultProxy::start(ctx.harness().server_addr().expect("checked above")).await;
    let direct = ctx.semaphore().await;
    let through_proxy = ctx.semaphore_at(proxy.addr()).await;
    let k = key("sem-lost-reply");
    let lease = long_ttl(&ctx);
    let request = permit_request(&k, 2, lease, "retrier");
    // A connection's first acquire may wait for a reply before it sends the
    // statement that acts (PostgreSQL prepares it): warm the path up.
    let warm_up = key("sem-lost-reply-warm-up");
    let (warm, _) = must_grant(&*through_proxy, &warm_up, 1, lease, "warm-up").await;
    through_proxy
        .release_permit(&warm_up, warm.permit_id)
        .await
        .unwrap();

    proxy.half_open(Direction::ToClient, Flow::Stall);
    let sent = Instant::now();
    // Without a request timeout of its own (PostgreSQL) the call is cut off
    // as the client layer cuts an attempt off.
    let bound = request_timeout.map_or(short, |request_timeout| request_timeout + HANG);
    match timeout(bound, through_proxy.try_acquire_permit(&request)).await {
        Ok(first) => assert_retryable_failure(&first, "an acquire whose reply was lost"),
        Err(_) => assert!(
            request_timeout.is_none(),
            "an acquire whose reply was lost hung past its request timeout"
        ),
    }
    let granted_unheard = if direct.semaphore_backend_name() == "dynamodb" {
        None
    } else {
        Some(permit_of(&ctx, &*direct, &k, "retrier").await)
    };

    proxy.heal();
    let give_up = Instant::now() + HANG;
    let fence = loop {
        match bounded(
            "a retried acquire",
            through_proxy.try_acquire_permit(&request),
        )
        .await
        {
            Ok(PermitOutcome::Granted { fence }) => break fence,
            Ok(PermitOutcome::Refused(permits)) => {
                panic!("a retried acquire was refused, its own permit not found: {permits:?}")
            }
            // The healed path may still be reconnecting.
            Err(err) if err.is_retryable() && Instant::now() < give_up => {
                ctx.sleep(short / 10).await;
            }
            Err(err) => panic!("a retried acquire after the path healed failed: {err}"),
        }
    };
    if let Some(unheard) = granted_unheard
        && surely_live(&ctx, sent, lease, Instant::now())
    {
        assert_eq!(
            fence, unheard,
            "the retry got a new fence: a second permit beside the unheard one"
        );
    }
    let permits = direct
        .inspect_permits(&k)
        .await
        .unwrap()
        .expect("the retried permit is held");
    let mine = permits
        .holders
        .iter()
        .filter(|h| h.owner() == "retrier")
        .count();
    assert_eq!(
        mine, 1,
        "a retried acquire must hold one permit: {permits:?}"
    );
    // Limit 2: a second client still gets one, and the refusal of a third
    // names both holders once each.
    must_grant(&*direct, &k, 2, lease, "other").await;
    let refused = must_refuse(&*direct, &k, 2, lease, "third").await;
    let mut owners: Vec<&str> = refused.holders.iter().map(|h| h.owner()).collect();
    owners.sort_unstable();
    assert_eq!(owners, ["other", "retrier"], "{refused:?}");
    assert_eq!(
        bounded(
            "a release",
            through_proxy.release_permit(&k, request.permit_id)
        )
        .await
        .unwrap(),
        ReleaseOutcome::Released
    );
    must_grant(&*direct, &k, 2, lease, "third").await;
}

/// Waits (a hang-catching bound only) until `owner` holds a live permit of
/// `k`, and returns its fence.
async fn permit_of(
    ctx: &Ctx,
    store: &dyn SemaphoreStore,
    k: &LockKey,
    owner: &str,
) -> FencingToken {
    let give_up = Instant::now() + HANG;
    loop {
        let permits = store.inspect_permits(k).await.expect("inspect permits");
        if let Some(held) = permits
            .iter()
            .flat_map(|p| &p.holders)
            .find(|h| h.owner() == owner)
        {
            return held.fence();
        }
        assert!(
            Instant::now() < give_up,
            "the server never granted {owner}'s acquire whose reply was lost"
        );
        ctx.sleep(ctx.profile().short_ttl / 40).await;
    }
}

/// A client on a healthy path takes a permit of `k` (limit 2) as soon as
/// one is free, and returns when the grant's reply **arrived**, as the
/// lock's `take_over`.
async fn take_a_permit(
    ctx: &Ctx,
    store: &dyn SemaphoreStore,
    k: &LockKey,
) -> (Instant, PermitRequest, FencingToken) {
    let give_up = Instant::now() + HANG;
    let request = permit_request(k, 2, long_ttl(ctx), "taker");
    loop {
        match timeout(HANG, store.try_acquire_permit(&request))
            .await
            .expect("a permit acquire on a healthy path hung")
        {
            Ok(PermitOutcome::Granted { fence }) => return (Instant::now(), request, fence),
            Ok(PermitOutcome::Refused(_)) => {}
            Err(err) => panic!("a permit acquire on a healthy path failed: {err}"),
        }
        assert!(
            Instant::now() < give_up,
            "no permit of {k} was free for a taker within {HANG:?}"
        );
        ctx.sleep(ctx.profile().short_ttl / 40).await;
    }
}

async fn holder_cut_off_by(ctx: Ctx, fault: Fault) {
    if !network_applies(&ctx).await {
        return;
    }
    let profile = ctx.profile().clone();
    let short = profile.short_ttl;
    let proxy = FaultProxy::start(ctx.harness().server_addr().expect("checked above")).await;
    let direct = ctx.semaphore().await;
    let through_proxy = ctx.semaphore_at(proxy.addr()).await;
    let k = key("sem-cut-off");

    // 1. A holder on the proxy, and a healthy client holding the other
    //    permit: a taker can only get the holder's, once it expired.
    let holder = Semaphore::from_arc(Arc::clone(&through_proxy));
    let guard = bounded(
        "a permit acquire through a working proxy",
        holder.acquire(&k, limit(2), AcquireOptions::new(short).wait_up_to(HANG)),
    )
    .await
    .expect("a permit acquire through a working proxy failed");
    let (filler, filler_fence) = must_grant(&*direct, &k, 2, long_ttl(&ctx), "filler").await;
    let old_fence = guard.fence();

    // 2. The fault, while the guard's renewals run.
    switch_on(&proxy, fault, short * 4);

    // 3. A taker on the healthy path. When its reply arrives the server has
    //    granted the holder's permit: by then the guard must distrust it,
    //    judged by its own deadline.
    let (taken_at, taker, new_fence) = take_a_permit(&ctx, &*direct, &k).await;
    assert!(
        new_fence > old_fence.max(filler_fence),
        "the taker's fence {new_fence} is not above {old_fence} and {filler_fence}"
    );
    assert!(
        guard.is_lost(),
        "the permit was taken while the cut-off guard ({fault:?}) still believed it held it"
    );
    assert!(
        guard.trusted_until() <= taken_at,
        "the guard trusted its permit until {:?}, after it was taken at {taken_at:?} ({fault:?})",
        guard.trusted_until()
    );
    assert!(
        matches!(guard.check(), Err(LockError::LeaseLost { .. })),
        "check() handed out the fence of a lost permit"
    );
    timeout(HANG, guard.lost())
        .await
        .expect("lost() never resolved although the guard's deadline had passed");

    // 4. Through the broken path: a typed, retryable failure within the
    //    wait, and within the store's request timeout where it has one.
    let attempt = timeout(
        HANG,
        holder.acquire(
            &key("sem-free-during-fault"),
            limit(1),
            AcquireOptions::new(short).wait_up_to(short * 2),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("a permit acquire through a {fault:?} hung"));
    assert_retryable_failure(&attempt, &format!("a permit acquire through a {fault:?}"));
    match profile.request_timeout {
        Some(request_timeout) => {
            let raw_request = permit_request(&key("sem-raw-during-fault"), 1, short, "raw");
            let raw = timeout(
                request_timeout + HANG,
                through_proxy.try_acquire_permit(&raw_request),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("a store call through a {fault:?} hung past its {request_timeout:?} request timeout")
            });
            assert_retryable_failure(&raw, &format!("a store call through a {fault:?}"));
        }
        None => assert_eq!(
            through_proxy.semaphore_backend_name(),
            "postgres",
            "only PostgreSQL stores have no request timeout of their own"
        ),
    }

    // 5. Recovery: a waiter behind the broken path; the taker lets go and
    //    the fault outlasts an attempt of the waiter's, then heals.
    let waiter_ttl = short * 2;
    let waiter = {
        let client = Semaphore::from_arc(Arc::clone(&through_proxy))
            .with_backoff(Backoff::new(Duration::from_millis(10), short));
        let k = k.clone();
        tokio::spawn(async move {
            client
                .acquire(
                    &k,
                    limit(2),
                    AcquireOptions::new(waiter_ttl).wait_up_to(HANG),
                )
                .await
        })
    };
    assert_eq!(
        direct.release_permit(&k, taker.permit_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    ctx.sleep(waiter_ttl * 2).await;
    proxy.heal();
    let waiter_guard = timeout(HANG * 2, waiter)
        .await
        .unwrap_or_else(|_| panic!("the waiter never got a permit after the {fault:?} healed"))
        .expect("the waiter task")
        .unwrap_or_else(|err| panic!("the waiter failed after the {fault:?} healed: {err}"));
    assert!(
        waiter_guard.fence() > new_fence,
        "the waiter's fence {} is not above the taker's {new_fence}",
        waiter_guard.fence()
    );
    // A busy machine may delay the waiter's renewals past its deadline: a
    // release then finds nothing, which only a hang or a release before the
    // deadline may not.
    let trusted_until = waiter_guard.trusted_until();
    let sent = Instant::now();
    let released = timeout(HANG, waiter_guard.release())
        .await
        .expect("the waiter's release hung");
    assert!(
        matches!(released, Ok(ReleaseOutcome::Released))
            || (matches!(released, Ok(ReleaseOutcome::NotHeld)) && sent >= trusted_until)
            || released.as_ref().is_err_and(LockError::is_retryable),
        "{released:?}"
    );
    direct.release_permit(&k, filler.permit_id).await.unwrap();
    drop(guard);
}
