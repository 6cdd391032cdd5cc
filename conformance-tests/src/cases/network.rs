//! Network faults between a holder and its server, through a
//! [`FaultProxy`]: delay, blackhole, reset, and half-open paths, switched
//! on while the holder's guard renews, and healed while a waiter waits.
//!
//! Every case plays the same story, under a different fault:
//!
//! 1. a holder acquires through the proxy and writes to a fenced resource;
//! 2. the fault is switched on (renewals may be in flight);
//! 3. a client on a healthy path takes the key over; when its reply
//!    arrives the holder's guard must already report the loss by its own
//!    deadline (`trusted_until() <=` the reply, `is_lost()`, `check()`);
//!    the holder's late write with its old fence is refused;
//! 4. calls through the broken path fail with retryable errors, within the
//!    configured timeouts (a generous bound only catches hangs);
//! 5. a waiter behind the broken path waits for the key, the fault heals,
//!    and the waiter gets it with a fence above every earlier one.
//!
//! Backends without a network ([`Network::Embedded`]) have nothing to
//! break: the cases check that the profile says so truthfully.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, Backoff, LockClient, LockError, ReleaseOutcome};
use tokio::time::{Instant, timeout};

use super::{
    EMBEDDED_BACKENDS, HANG, assert_retryable_failure, key, long_ttl, request, surely_live,
    take_over,
};
use crate::fenced::{FencedResource, Write};
use crate::proxy::{Direction, FaultProxy, Flow};
use crate::{Ctx, Network};

/// The fault a case switches on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Latency in both directions, longer than the TTL and than the
    /// store's request timeout.
    Delay,
    /// Nothing forwarded, nothing closed.
    Blackhole,
    /// Every connection reset, new ones refused.
    Reset,
    /// Requests reach the server, replies never come back: the server acts
    /// (renews, grants) and the client never hears.
    RepliesLost,
    /// The request direction is shut with a FIN; replies would pass.
    RequestsClosed,
}

/// A holder delayed by more than its TTL loses its lease by its deadline,
/// never after a takeover; a write with its old fence is refused; calls
/// through the slow path time out as retryable errors; once the delay is
/// gone a waiter gets the key with a higher fence.
pub async fn network_delay_past_the_ttl_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::Delay).await;
}

/// As the delay case, for a blackhole: open and new connections forward
/// nothing and report nothing.
pub async fn network_blackhole_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::Blackhole).await;
}

/// As the delay case, for resets: every connection is reset, new ones too.
pub async fn network_reset_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::Reset).await;
}

/// As the delay case, for a half-open path whose replies are lost: the
/// holder's renewals still reach the server and extend the lease there, yet
/// its guard, hearing nothing, must stop trusting it by its deadline.
pub async fn network_half_open_losing_replies_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::RepliesLost).await;
}

/// As the delay case, for a half-open path whose request direction was
/// closed (a FIN towards the server, on open and new connections).
pub async fn network_half_open_closing_requests_cuts_the_holder_off_safely(ctx: Ctx) {
    holder_cut_off_by(ctx, Fault::RequestsClosed).await;
}

/// Whether the backend has a network to break; for one that has none,
/// checks that the profile and the harness say so truthfully.
pub(crate) async fn network_applies(ctx: &Ctx) -> bool {
    let backend = ctx.store().await.backend_name();
    match ctx.profile().network {
        Network::Tcp => {
            assert!(
                ctx.harness().server_addr().is_some(),
                "the profile of {backend} says Network::Tcp, but Harness::server_addr is None"
            );
            true
        }
        Network::Embedded => {
            assert!(
                EMBEDDED_BACKENDS.contains(&backend),
                "the profile of {backend} says Network::Embedded, but it is not one of the \
                 embedded backends {EMBEDDED_BACKENDS:?}: its network faults must be tested"
            );
            assert!(
                ctx.harness().server_addr().is_none(),
                "{backend} is Network::Embedded but its harness names a server address"
            );
            false
        }
        Network::Cluster => {
            assert_eq!(
                backend, "redis",
                "the profile of {backend} says Network::Cluster, which only a Redis Cluster is"
            );
            false
        }
    }
}

pub(crate) fn switch_on(proxy: &FaultProxy, fault: Fault, delay: Duration) {
    match fault {
        Fault::Delay => proxy.delay(delay, delay),
        Fault::Blackhole => proxy.blackhole(),
        Fault::Reset => proxy.reset(),
        Fault::RepliesLost => proxy.half_open(Direction::ToClient, Flow::Stall),
        Fault::RequestsClosed => proxy.half_open(Direction::ToServer, Flow::Closed),
    }
}

async fn holder_cut_off_by(ctx: Ctx, fault: Fault) {
    if !network_applies(&ctx).await {
        return;
    }
    let profile = ctx.profile().clone();
    let short = profile.short_ttl;
    let upstream = ctx.harness().server_addr().expect("checked above");
    let proxy = FaultProxy::start(upstream).await;
    let direct = ctx.store().await;
    let through_proxy = ctx.store_at(proxy.addr()).await;
    let resource = FencedResource::new();
    let k = key("cut-off");

    // 1. A holder on the proxy, with a small delay for the delay case (a
    //    slow but working link; its renewals may or may not keep up, which
    //    nothing below depends on).
    if let Fault::Delay = fault {
        proxy.delay(short / 20, short / 20);
    }
    let holder = LockClient::from_arc(Arc::clone(&through_proxy));
    let guard = timeout(
        HANG * 2,
        holder.acquire(&k, AcquireOptions::new(short).wait_up_to(HANG)),
    )
    .await
    .expect("an acquire through a working proxy hung")
    .expect("an acquire through a working proxy failed");
    let old_fence = guard.fence();
    assert_eq!(
        resource.write(k.as_str(), old_fence, "holder"),
        Write::Accepted
    );

    // 2. The fault, while the guard's renewals run. A delay longer than
    //    both the TTL and the store's own request timeout, so that neither
    //    a renewal nor a single request can get an answer in time.
    let delay = (short * 4).max(profile.request_timeout.unwrap_or_default());
    switch_on(&proxy, fault, delay);

    // 3. A takeover on a healthy path, at once (before anything slow). When its reply arrives the server
    //    has granted the key: by then the guard must distrust its lease,
    //    judged by its own deadline, not by when a task got scheduled.
    let (taken_at, taker, new_fence) = take_over(&ctx, &*direct, &k, long_ttl(&ctx)).await;
    assert!(
        new_fence > old_fence,
        "fence went from {old_fence} to {new_fence}"
    );
    assert!(
        guard.is_lost(),
        "the key was taken over while the cut-off guard ({fault:?}) still believed it held it"
    );
    assert!(
        guard.trusted_until() <= taken_at,
        "the guard trusted its lease until {:?}, after the takeover at {taken_at:?} ({fault:?})",
        guard.trusted_until()
    );
    assert!(
        matches!(guard.check(), Err(LockError::LeaseLost { .. })),
        "check() handed out the fence of a lost lease"
    );
    timeout(HANG, guard.lost())
        .await
        .expect("lost() never resolved although the guard's deadline had passed");
    assert_eq!(
        resource.write(k.as_str(), new_fence, "taker"),
        Write::Accepted
    );
    assert_eq!(
        resource.write(k.as_str(), old_fence, "holder"),
        Write::Refused {
            highest: new_fence.get()
        },
        "the fenced resource accepted the cut-off holder's late write"
    );

    // 4. Through the broken path: a typed, retryable failure, within the
    //    wait (the client layer bounds every attempt) — never a hang.
    let waited = short * 2;
    let attempt = timeout(
        HANG,
        holder.acquire(
            "free-during-fault",
            AcquireOptions::new(short).wait_up_to(waited),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("an acquire waiting {waited:?} through a {fault:?} hung"));
    assert_retryable_failure(&attempt, &format!("an acquire through a {fault:?}"));
    // A single store call is bounded by the store's own request timeout,
    // where it has one.
    match profile.request_timeout {
        Some(request_timeout) => {
            let raw = timeout(
                request_timeout + HANG,
                through_proxy.try_acquire(&request(&key("raw-during-fault"), short, "raw")),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("a store call through a {fault:?} hung past its {request_timeout:?} request timeout")
            });
            assert_retryable_failure(&raw, &format!("a store call through a {fault:?}"));
        }
        None => assert_eq!(
            through_proxy.backend_name(),
            "postgres",
            "only PostgreSQL stores have no request timeout of their own"
        ),
    }

    // 5. Recovery. A waiter behind the broken path waits for the key; the
    //    taker lets go, the fault heals. The waiter must then hold the key
    //    with a fence above every earlier one. The time it takes after the
    //    heal (reconnecting, one backoff step — capped at the TTL here —
    //    and stalled bytes draining) is logged, not asserted: how soon a
    //    client reconnects depends on the machine's load, and a speed
    //    bound here would fail on a busy machine; HANG catches a waiter
    //    that never recovers.
    let waiter_client = LockClient::from_arc(Arc::clone(&through_proxy))
        .with_backoff(Backoff::new(Duration::from_millis(10), short));
    let waiter_key = k.clone();
    // A lease of two TTLs bounds each of the waiter's attempts to that, and
    // the fault outlasts it: at least one attempt gets no answer, and the
    // client layer (not only the store's own reconnecting) must carry the
    // wait across the outage.
    let waiter_ttl = short * 2;
    let waiter = tokio::spawn(async move {
        waiter_client
            .acquire(
                &waiter_key,
                AcquireOptions::new(waiter_ttl).wait_up_to(HANG),
            )
            .await
    });
    assert_eq!(
        direct.release(&k, taker.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    ctx.sleep(waiter_ttl * 2).await;
    proxy.heal();
    let healed_at = Instant::now();
    let waiter_guard = timeout(HANG * 2, waiter)
        .await
        .unwrap_or_else(|_| panic!("the waiter never got the key after the {fault:?} healed"))
        .expect("the waiter task")
        .unwrap_or_else(|err| panic!("the waiter failed after the {fault:?} healed: {err}"));
    tracing::info!(?fault, recovered_in = ?healed_at.elapsed(), "waiter holds the key after the fault healed");
    assert!(
        waiter_guard.fence() > new_fence,
        "the waiter's fence {} is not above the taker's {new_fence}",
        waiter_guard.fence()
    );
    let asked = Instant::now();
    let holder_now = direct.inspect(&k).await.unwrap();
    // Decided only while the waiter's lease is surely live (it renews, but
    // a busy machine may delay that).
    let confirmed = waiter_guard.lease().sent_at();
    if surely_live(&ctx, confirmed, waiter_ttl, Instant::now()) && asked >= confirmed {
        assert_eq!(
            holder_now.map(|h| h.fence()),
            Some(waiter_guard.fence()),
            "the store does not show the waiter as the holder"
        );
    }
    assert_eq!(
        resource.write(k.as_str(), waiter_guard.fence(), "waiter"),
        Write::Accepted
    );
    // A busy emulator may not answer the release in time; the lease then
    // ends by its TTL. Either is fine here: only a hang is not. On a machine
    // so loaded that the waiter's renewals came too late, its lease may have
    // ended before the release was sent: `NotHeld` is then the truth, and
    // is accepted only past the guard's own deadline.
    let trusted_until = waiter_guard.trusted_until();
    let sent = Instant::now();
    let released = timeout(HANG, waiter_guard.release())
        .await
        .expect("the waiter's release hung");
    assert!(
        matches!(released, Ok(ReleaseOutcome::Released))
            || (matches!(released, Ok(ReleaseOutcome::NotHeld)) && sent >= trusted_until)
            || released.as_ref().is_err_and(|e| e.is_retryable()),
        "{released:?} (sent {:?} after the guard's deadline)",
        sent.checked_duration_since(trusted_until)
    );
    drop(guard);
}

/// A call bounded for the other fault cases by twice `HANG`, so that it
/// may itself wait up to `HANG`.
pub(crate) async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    timeout(HANG * 2, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {:?}", HANG * 2))
}
