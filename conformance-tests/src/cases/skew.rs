//! Client clock skew, where a client's clock judges expiry
//! ([`ClientClock::PerClient`]: DynamoDB, which has no clock of its own).
//!
//! Stores with a client clock set apart from the host's come from
//! [`Harness::store_with_clock`](crate::Harness::store_with_clock). A holder
//! cut off after acquiring (its renewals hang) and a taker that tries until
//! it gets the key show what each setting promises (`CONTRACT.md`, promise
//! 5):
//!
//! * clocks apart by less than the skew allowance, in either direction: no
//!   takeover before the holder's own deadline;
//! * clocks apart by more: wall-clock mode takes over early — the holder
//!   still trusts its lease when the taker's grant arrives, which is what
//!   the allowance exists to prevent — and only the fence protects the
//!   resource; the skew-free mode, with the same clocks, waits for the
//!   holder's deadline.
//!
//! Elsewhere the profile must say why skew cannot matter
//! ([`ClientClock::NotRead`]: the server's clock judges; [`ClientClock::Shared`]:
//! one clock every client reads, which nothing here can set apart — SQLite
//! reads the host clock inside its statements and has no clock hook, and
//! stepping the host's clock would need root and disturb the machine).

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, FencingToken, LockClient, LockGuard, LockKey, LockStore};

use super::network::bounded;
use super::{HANG, key, take_over};
use crate::fault::PartitionableStore;
use crate::fenced::{FencedResource, Write};
use crate::{ClientClock, ClockSetting, Ctx};

/// Clocks apart by three quarters of the allowance — the holder's behind,
/// or the taker's ahead — never let a takeover land before the holder's
/// deadline.
pub async fn client_clock_skew_within_the_allowance_never_takes_over_early(ctx: Ctx) {
    let Some((allowance, _)) = skew_applies(&ctx).await else {
        return;
    };
    let short = ctx.profile().short_ttl;
    let skew = millis(allowance * 3 / 4);
    for (name, holder_offset, taker_offset) in
        [("holder-behind", -skew, 0), ("taker-ahead", 0, skew)]
    {
        let holder = clocked(&ctx, holder_offset, false).await;
        let taker = clocked(&ctx, taker_offset, false).await;
        let k = key(name);
        let (guard, _) = cut_off_holder(holder, &k, short).await;
        let (taken_at, _, fence) = take_over(&ctx, &*taker, &k, short).await;
        assert!(fence > guard.fence());
        assert!(
            guard.trusted_until() <= taken_at && guard.is_lost(),
            "{name}: clocks {skew} ms apart (within the {allowance:?} allowance) let a takeover \
             land at {taken_at:?}, before the holder's deadline {:?}",
            guard.trusted_until()
        );
    }
}

/// Clocks apart by far more than the allowance: in wall-clock mode the
/// taker gets the key while the holder still trusts its lease, and the
/// fenced resource refuses the holder's write; in skew-free mode the same
/// clocks wait for the holder's deadline.
pub async fn client_clock_skew_beyond_the_allowance_is_fenced_or_skew_free(ctx: Ctx) {
    let Some((allowance, skew_free_mode)) = skew_applies(&ctx).await else {
        return;
    };
    let short = ctx.profile().short_ttl;
    // A long lease, so that the holder still trusts it when the early
    // takeover lands however slow the server is (the takeover comes at
    // once; nothing waits the lease out); a skew beyond it.
    let lease = (short * 25).max(Duration::from_secs(60));
    let skew = millis(lease + allowance * 2);

    let holder = clocked(&ctx, -skew, false).await;
    let taker = clocked(&ctx, 0, false).await;
    let k = key("far-behind");
    let (guard, old_fence) = cut_off_holder(holder, &k, lease).await;
    let resource = FencedResource::new();
    assert_eq!(
        resource.write(k.as_str(), old_fence, "holder"),
        Write::Accepted
    );
    let (taken_at, _, new_fence) = take_over(&ctx, &*taker, &k, lease).await;
    assert!(
        guard.trusted_until() > taken_at,
        "a holder whose clock is {skew} ms behind (allowance {allowance:?}) was not taken over \
         early: the store does not read client clocks as its profile says"
    );
    assert!(new_fence > old_fence);
    assert_eq!(
        resource.write(k.as_str(), new_fence, "taker"),
        Write::Accepted
    );
    // The holder still believes: only the fence stops its write.
    let believed = guard.check().expect("the holder still trusts its lease");
    assert_eq!(
        resource.write(k.as_str(), believed, "holder"),
        Write::Refused {
            highest: new_fence.get()
        },
        "the fenced resource accepted the write of a holder taken over early"
    );
    drop(guard);

    if !skew_free_mode {
        return;
    }
    let holder = clocked(&ctx, -skew, true).await;
    let taker = clocked(&ctx, skew, true).await;
    let k = key("far-behind-skew-free");
    let (guard, _) = cut_off_holder(holder, &k, short).await;
    let (taken_at, _, fence) = take_over(&ctx, &*taker, &k, short).await;
    assert!(fence > guard.fence());
    assert!(
        guard.trusted_until() <= taken_at && guard.is_lost(),
        "skew-free mode let a takeover land at {taken_at:?}, before the holder's deadline {:?}, \
         with clocks {} ms apart",
        guard.trusted_until(),
        skew * 2
    );
}

/// The allowance and whether a skew-free mode exists, where clients' clocks
/// judge expiry; elsewhere checks that the profile says why they cannot.
async fn skew_applies(ctx: &Ctx) -> Option<(Duration, bool)> {
    let backend = ctx.store().await.backend_name();
    let setting = ClockSetting {
        offset_ms: 1_000,
        skew_free: false,
    };
    let offered = ctx
        .harness()
        .store_with_clock(ctx.namespace(), setting)
        .await
        .is_some();
    let expected: &[&str] = match ctx.profile().client_clock {
        ClientClock::PerClient {
            skew_allowance,
            skew_free_mode,
        } => {
            assert!(
                offered,
                "{backend}'s profile says ClientClock::PerClient, but its harness cannot set a \
                 client clock apart (Harness::store_with_clock)"
            );
            return Some((skew_allowance, skew_free_mode));
        }
        ClientClock::NotRead => &["redis", "postgres"],
        ClientClock::Shared => &["memory", "sqlite"],
    };
    assert!(
        !offered,
        "{backend}'s harness sets client clocks apart, but its profile says they do not matter"
    );
    assert!(
        expected.contains(&backend),
        "{backend}'s profile says {:?}, which is the truth only for {expected:?}",
        ctx.profile().client_clock
    );
    None
}

async fn clocked(ctx: &Ctx, offset_ms: i64, skew_free: bool) -> Arc<dyn LockStore> {
    ctx.harness()
        .store_with_clock(
            ctx.namespace(),
            ClockSetting {
                offset_ms,
                skew_free,
            },
        )
        .await
        .expect("checked by skew_applies")
}

/// A holder that acquires, then is cut off (its renewals hang), so that
/// its lease runs out by the clocks alone.
async fn cut_off_holder(
    store: Arc<dyn LockStore>,
    k: &LockKey,
    ttl: Duration,
) -> (LockGuard, FencingToken) {
    let partitioned = Arc::new(PartitionableStore::new(store));
    let client = LockClient::from_arc(Arc::clone(&partitioned) as Arc<dyn LockStore>);
    let guard = bounded(
        "an acquire",
        client.acquire(k, AcquireOptions::new(ttl).wait_up_to(HANG)),
    )
    .await
    .expect("the holder's acquire");
    partitioned.cut();
    let fence = guard.fence();
    (guard, fence)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).expect("a test duration")
}
