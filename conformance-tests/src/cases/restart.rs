//! The server restarted while a lease is held and a waiter waits.
//!
//! The case starts a server of its own ([`Harness::private_server`]): a
//! holder and a probe talk to it directly and meet the restart as it
//! happens; a waiter talks to it through a [`FaultProxy`] that resets every
//! connection for the whole outage, from just before the stop until the
//! server is back and provisioned. That keeps the waiter's story the same on
//! every backend: a restarted in-memory emulator has lost its table, and a
//! waiter reaching it before an operator re-created the table would be told
//! so (a `Config` error, which ends its wait, rightly) — the probe checks
//! that answer instead.
//!
//! What a restart keeps is the profile's [`Restart`]: PostgreSQL keeps
//! leases, Redis without persistence loses them, an emulator loses its
//! table. In every case fences keep rising (`CONTRACT.md`, promise 3: Redis
//! derives them from its clock, PostgreSQL from its WAL-logged sequence,
//! DynamoDB from the writer's wall clock when an item is new), and a stale
//! holder's write is refused. Mutual exclusion across the restart is
//! asserted only where leases survive it.
//!
//! [`Harness::private_server`]: crate::Harness::private_server

use std::time::Duration;

use lockstore_api::{
    AcquireOptions, AcquireOutcome, Backoff, LockClient, LockError, ReleaseOutcome,
};
use tokio::time::{Instant, timeout};

use super::network::bounded;
use super::{EMBEDDED_BACKENDS, HANG, assert_retryable_failure, key, long_ttl, request};
use crate::fenced::{FencedResource, Write};
use crate::proxy::FaultProxy;
use crate::{Ctx, Restart};

/// A restart while a guard holds a key and a waiter waits: calls fail with
/// retryable errors while the server is down, the guard reports the loss
/// by its deadline, a lease survives where the profile says it does, the
/// waiter gets the key after the restart with a fence above the holder's,
/// and the holder's late write is refused.
pub async fn server_restart_while_held_and_awaited_keeps_fences_rising(ctx: Ctx) {
    let restart = ctx.profile().restart;
    let server = ctx.harness().private_server().await;
    let backend = ctx.store().await.backend_name();
    if restart == Restart::Cluster {
        assert_eq!(
            backend, "redis",
            "{backend}'s profile says Restart::Cluster, which only a Redis Cluster is"
        );
        return;
    }
    let Some(mut server) = server else {
        assert_eq!(
            restart,
            Restart::NoServer,
            "{backend}'s profile says {restart:?}, but its harness starts no private server"
        );
        assert!(
            EMBEDDED_BACKENDS.contains(&backend),
            "{backend} has a server to restart, but its profile says Restart::NoServer"
        );
        return;
    };
    assert_ne!(
        restart,
        Restart::NoServer,
        "{backend}'s harness starts a server, but its profile says Restart::NoServer"
    );
    let short = ctx.profile().short_ttl;
    let long = long_ttl(&ctx);
    server.provision().await;
    let addr = server.addr();
    let waiter_path = FaultProxy::start(addr.to_string()).await;
    let probe = ctx.store_at(addr).await;
    let holder = LockClient::from_arc(ctx.store_at(addr).await);
    let waiter_client = LockClient::from_arc(ctx.store_at(waiter_path.addr()).await)
        .with_backoff(Backoff::new(Duration::from_millis(10), short));
    let resource = FencedResource::new();
    let k = key("restarted");

    let guard = bounded(
        "an acquire",
        holder.acquire(&k, AcquireOptions::new(short).wait_up_to(HANG)),
    )
    .await
    .expect("acquire before the restart");
    let old_fence = guard.fence();
    assert_eq!(
        resource.write(k.as_str(), old_fence, "holder"),
        Write::Accepted
    );
    // A lease that outlives the whole case unless the restart loses it.
    let survivor_key = key("survivor");
    let survivor = request(&survivor_key, long, "survivor");
    let survivor_fence = match bounded("an acquire", probe.try_acquire(&survivor)).await {
        Ok(AcquireOutcome::Acquired { fence }) => fence,
        other => panic!("the survivor's acquire: {other:?}"),
    };
    let waiter_key = k.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .acquire(&waiter_key, AcquireOptions::new(long).wait_up_to(HANG * 2))
            .await
    });
    // Lets the waiter start waiting (not needed for any assertion).
    ctx.sleep(short / 4).await;

    waiter_path.reset();
    bounded("stopping the server", server.stop()).await;

    // While it is down: typed, retryable, bounded.
    let attempt = bounded(
        "an acquire against a stopped server",
        holder.acquire(
            "while-down",
            AcquireOptions::new(short).wait_up_to(short * 2),
        ),
    )
    .await;
    assert_retryable_failure(&attempt, "an acquire against a stopped server");
    let raw = bounded(
        "a store call against a stopped server",
        probe.try_acquire(&request(&key("raw-while-down"), short, "raw")),
    )
    .await;
    assert_retryable_failure(&raw, "a store call against a stopped server");
    // Nothing can renew: the guard gives up by its deadline.
    timeout(HANG, guard.lost())
        .await
        .expect("the guard never reported the loss of a lease it could not renew");
    assert!(guard.is_lost() && guard.check().is_err());
    assert!(
        Instant::now() >= guard.trusted_until(),
        "the guard reported a loss before its deadline without any answer saying so"
    );

    bounded("starting the server", server.start()).await;
    if restart == Restart::LosesTable {
        // Until an operator re-creates the table, the answer says so.
        let before_provisioning = bounded(
            "a store call to a restarted emulator",
            probe.try_acquire(&request(&key("before-provisioning"), short, "probe")),
        )
        .await;
        assert!(
            matches!(before_provisioning, Err(LockError::Config { .. })),
            "a restarted emulator without its table must answer with a Config error, got \
             {before_provisioning:?}"
        );
        bounded("provisioning the server", server.provision()).await;
    }
    waiter_path.heal();
    let healed_at = Instant::now();

    // The survivor's lease: kept exactly where leases survive a restart.
    let after_request = request(&survivor_key, long, "after");
    let after = bounded(
        "a store call after the restart",
        retry_retryable(|| probe.try_acquire(&after_request)),
    )
    .await;
    match (restart, after) {
        (Restart::KeepsLeases, AcquireOutcome::Held(holder)) => {
            assert_eq!(holder.fence(), survivor_fence, "{holder:?}");
        }
        (Restart::KeepsLeases, AcquireOutcome::Acquired { fence }) => {
            panic!(
                "{backend} lost a live lease in a restart (its profile says KeepsLeases); fence {fence}"
            )
        }
        (_, AcquireOutcome::Acquired { fence }) => assert!(
            fence > survivor_fence,
            "fence went from {survivor_fence} to {fence} across a restart that lost the lease"
        ),
        (_, AcquireOutcome::Held(holder)) => panic!(
            "{backend}'s profile says {restart:?}, but a lease survived the restart: {holder:?}"
        ),
    }

    let waiter_guard = timeout(HANG * 2, waiter)
        .await
        .expect("the waiter never got the key after the restart")
        .expect("the waiter task")
        .unwrap_or_else(|err| panic!("the waiter failed after the restart: {err}"));
    tracing::info!(?restart, recovered_in = ?healed_at.elapsed(), "waiter holds the key after the restart");
    let new_fence = waiter_guard.fence();
    assert!(
        new_fence > old_fence,
        "fence went from {old_fence} to {new_fence} across a restart ({restart:?})"
    );
    assert_eq!(
        resource.write(k.as_str(), new_fence, "waiter"),
        Write::Accepted
    );
    assert_eq!(
        resource.write(k.as_str(), old_fence, "holder"),
        Write::Refused {
            highest: new_fence.get()
        },
        "the fenced resource accepted the old holder's write after the restart"
    );
    assert_eq!(
        bounded("a release", waiter_guard.release()).await.unwrap(),
        ReleaseOutcome::Released
    );
    drop(guard);
    let _ = probe.release(&survivor_key, survivor.lease_id).await;
}

/// The first answer that is not a retryable error: clients reconnect after
/// a restart at their own pace.
async fn retry_retryable<F, Fut>(mut call: F) -> AcquireOutcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<AcquireOutcome, LockError>>,
{
    loop {
        match call().await {
            Ok(outcome) => return outcome,
            Err(err) if err.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("a call after the restart failed for good: {err}"),
        }
    }
}
