//! A holder **process** stopped with `SIGSTOP` inside its critical section,
//! past its TTL, then continued.
//!
//! The child (this test binary re-run, see [`crate::child`]) acquires
//! through the real backend with a renewing guard, writes once to a fenced
//! resource the parent serves over TCP, checks its fence for the next write
//! and says so. The parent stops it — no thread of it runs, the renewal
//! task included — takes the key over on the backend, writes with the new
//! fence, and continues the child, telling it when the takeover's reply
//! arrived (as a `CLOCK_MONOTONIC` reading, one clock for every process on
//! the host). The child looks at its guard at once: it must report the loss
//! (`is_lost`, `check`), its deadline must not be after the takeover, and
//! its write with the fence it checked before the pause must be refused.

use std::time::Duration;

use lockstore_api::{AcquireOptions, FencingToken, LockError};

use super::network::bounded;
use super::{HANG, in_one_process, key, long_ttl, take_over};
use crate::Ctx;
use crate::child::{self, instant_of, monotonic_nanos, next_command, report};
use crate::fenced::{FencedResource, Write, write_remote};

/// Where the parent's fenced resource listens, for the child.
const RESOURCE_VAR: &str = "LOCKSTORE_CONFORMANCE_FENCED_RESOURCE";
const KEY: &str = "paused-holder";

/// A holder process paused past its TTL and continued after a takeover
/// reports the loss as soon as it looks, by a deadline no later than the
/// takeover, and its late write is refused by the fenced resource.
pub async fn paused_holder_process_is_fenced_out_after_a_takeover(ctx: Ctx) {
    let backend = ctx.store().await.backend_name();
    if in_one_process(&ctx, backend, "locks") {
        return;
    }
    if ctx.is_child() {
        return paused_child(ctx).await;
    }
    let resource = FencedResource::new();
    let resource_addr = resource.serve().await;
    let mut holder = child::spawn(&ctx, &[(RESOURCE_VAR, resource_addr.to_string())]);
    let old_fence = FencingToken::new(
        holder
            .expect("HOLDING")
            .await
            .parse()
            .expect("the child's fence"),
    );

    holder.stop();
    let store = ctx.store().await;
    let k = key(KEY);
    let (_, _, new_fence) = take_over(&ctx, &*store, &k, long_ttl(&ctx)).await;
    // Read right after the reply arrived: later than the reply, never
    // earlier, so the child's comparison errs only towards passing by the
    // time between two clock reads.
    let taken_at = monotonic_nanos();
    assert!(
        new_fence > old_fence,
        "fence went from {old_fence} to {new_fence}"
    );
    assert_eq!(resource.write(KEY, new_fence, "taker"), Write::Accepted);

    holder.resume();
    holder.send(&format!("GO {taken_at}")).await;
    let looked = holder.expect("LOOKED").await;
    assert_eq!(
        looked, "lost=true check=lease-lost deadline_after_takeover=false",
        "the continued holder's guard, asked at once (lost / check / whether its deadline was \
         after the takeover)"
    );
    let wrote = holder.expect("WROTE").await;
    assert_eq!(
        wrote,
        format!("refused {new_fence}"),
        "the fenced resource accepted the continued holder's stale write"
    );
    holder.finish().await;
    let log = resource.log();
    assert_eq!(
        log.iter().map(|e| e.writer.as_str()).collect::<Vec<_>>(),
        ["child", "taker", "child-after-pause"],
        "{log:?}"
    );
}

/// The child's part: hold, check, wait (here the parent stops it), look,
/// write anyway.
async fn paused_child(ctx: Ctx) {
    let resource: std::net::SocketAddr = child::var(RESOURCE_VAR).parse().expect("an address");
    let client = ctx.client().await;
    // A guard whose check passes, before anything is written. With a short
    // TTL a busy machine may read the acquire's reply past the guard's
    // deadline; such a guard is dropped (freeing the key) and the acquire
    // tried again. Only a hang fails here.
    let give_up = tokio::time::Instant::now() + HANG;
    let (guard, fence) = loop {
        let guard = bounded(
            "the child's acquire",
            client.acquire(
                KEY,
                AcquireOptions::new(ctx.profile().short_ttl).wait_up_to(HANG),
            ),
        )
        .await
        .expect("the child's acquire");
        if let Ok(fence) = guard.check() {
            break (guard, fence);
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no acquire within {HANG:?} left a guard trusted long enough to check it"
        );
        drop(guard);
    };
    assert_eq!(
        write_remote(resource, KEY, fence, "child").await,
        Write::Accepted
    );
    // The fence it checked is the one it writes with after the pause. (Its
    // lease may have run out by now on a busy machine; the takeover below
    // comes after the pause either way, and is what the case is about.)
    report(&format!("HOLDING {}", fence.get()));
    let go = next_command().await;
    let taken_at: u128 = go
        .strip_prefix("GO ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the parent said {go:?}"));
    // Right after continuing, before anything else: each view judges the
    // deadline itself.
    let lost = guard.is_lost();
    let check = match guard.check() {
        Ok(_) => "trusted",
        Err(LockError::LeaseLost { .. }) => "lease-lost",
        Err(_) => "other-error",
    };
    let deadline_after_takeover = guard.trusted_until() > instant_of(taken_at);
    report(&format!(
        "LOOKED lost={lost} check={check} deadline_after_takeover={deadline_after_takeover}"
    ));
    // A worker that checked before the pause writes anyway.
    let outcome = write_remote(resource, KEY, fence, "child-after-pause").await;
    report(&match outcome {
        Write::Accepted => "WROTE accepted".to_owned(),
        Write::Refused { highest } => format!("WROTE refused {highest}"),
    });
    // The release answers NotHeld (or fails): not this case's concern.
    let _ = tokio::time::timeout(Duration::from_secs(10), guard.release()).await;
}
