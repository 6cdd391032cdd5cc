//! A permit holder **process** stopped with `SIGSTOP` past its TTL, then
//! continued: the semaphore's counterpart of the lock's pause case
//! ([`crate::cases::paused_holder_process_is_fenced_out_after_a_takeover`]).
//!
//! The child holds a permit under a renewing guard and writes once to a
//! [`PermitResource`] the parent serves over TCP. The parent stops it,
//! fills the limit — N − 1 permits at once, the last one only when the
//! child's permit has expired and the store drops it — writes with those N
//! fences, and continues the child, telling it when the last grant's reply
//! arrived (`CLOCK_MONOTONIC`, one clock for every process on the host). The
//! child looks at its guard at once: it must report the loss (`is_lost`,
//! `check`) by a deadline no later than that grant, and its write with the
//! fence it checked before the pause must be refused, N higher fences being
//! inside.

use lockstore_api::semaphore::PermitOutcome;
use lockstore_api::{AcquireOptions, LockError};

use super::resource::{Connection, Entry, PermitResource, join};
use super::{limit, must_grant, permit_request, watch_permits};
use crate::Ctx;
use crate::cases::{HANG, bounded, in_one_process, key, long_ttl};
use crate::child::{self, instant_of, monotonic_nanos, next_command, report};

const RESOURCE_VAR: &str = "LOCKSTORE_CONFORMANCE_PERMIT_RESOURCE";
const KEY: &str = "sem-paused-holder";
const LIMIT: u32 = 2;

/// A permit holder process paused past its TTL and continued after the
/// limit was filled without it reports the loss as soon as it looks, by a
/// deadline no later than the grant that took its place, and its late write
/// is refused by the permit resource.
pub async fn semaphore_paused_holder_process_is_fenced_out(ctx: Ctx) {
    let backend = ctx.semaphore().await.semaphore_backend_name();
    if in_one_process(&ctx, backend, "permits") {
        return;
    }
    if ctx.is_child() {
        return paused_child(ctx).await;
    }
    let resource = PermitResource::new(LIMIT);
    let addr = resource.serve().await;
    let mut holder = child::spawn(&ctx, &[(RESOURCE_VAR, addr.to_string())]);
    let old_fence: u64 = holder
        .expect("HOLDING")
        .await
        .parse()
        .expect("the child's fence");

    holder.stop();
    let store = ctx.semaphore().await;
    let k = key(KEY);
    let lease = long_ttl(&ctx);
    let mut fences = Vec::new();
    for i in 1..LIMIT {
        fences.push(
            must_grant(&*store, &k, LIMIT, lease, &format!("filler-{i}"))
                .await
                .1,
        );
    }
    // The limit is full with the child's permit: the next grant is the
    // child's place, once its permit has expired.
    watch_permits(&ctx, &*store, &k).await;
    let request = permit_request(&k, LIMIT, lease, "taker");
    let give_up = tokio::time::Instant::now() + HANG;
    let taker = loop {
        match bounded(
            "a permit takeover attempt",
            store.try_acquire_permit(&request),
        )
        .await
        {
            Ok(PermitOutcome::Granted { fence }) => break fence,
            Ok(PermitOutcome::Refused(_)) => {}
            Err(err) => panic!("a permit takeover attempt failed: {err}"),
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the stopped child's permit was never taken within {HANG:?}"
        );
        ctx.sleep(ctx.profile().short_ttl / 40).await;
    };
    // Read right after the reply arrived: later than the grant, never
    // earlier, so the child's comparison errs only towards passing.
    let taken_at = monotonic_nanos();
    fences.push(taker);
    for (i, &fence) in fences.iter().enumerate() {
        assert!(
            fence.get() > old_fence,
            "fence {fence} granted after the child's {old_fence}"
        );
        assert!(
            matches!(resource.write(fence, "parent"), Entry::Accepted { inside } if inside == i + 2),
            "the parent's write with {fence} was refused or miscounted: {:?}",
            resource.counts()
        );
    }

    holder.resume();
    holder.send(&format!("GO {taken_at}")).await;
    assert_eq!(
        holder.expect("LOOKED").await,
        "lost=true check=lease-lost deadline_after_takeover=false",
        "the continued holder's guard, asked at once (lost / check / whether its deadline was \
         after the grant that took its place)"
    );
    let higher: Vec<u64> = fences.iter().map(|f| f.get()).collect();
    assert_eq!(
        holder.expect("WROTE").await,
        format!("refused {}", join(&higher)),
        "the permit resource accepted the continued holder's stale write"
    );
    holder.finish().await;
    let writers: Vec<(String, bool)> = resource
        .counts()
        .log
        .into_iter()
        .map(|(writer, _, accepted)| (writer, accepted))
        .collect();
    let mut expected = vec![("child".to_owned(), true)];
    expected.extend((0..LIMIT).map(|_| ("parent".to_owned(), true)));
    expected.push(("child-after-pause".to_owned(), false));
    assert_eq!(writers, expected);
}

/// The child's part: hold, write, wait (here the parent stops it), look,
/// write anyway.
async fn paused_child(ctx: Ctx) {
    let addr = child::var(RESOURCE_VAR).parse().expect("an address");
    let mut resource = Connection::open(addr).await;
    let client = ctx.semaphore_client().await;
    // A guard whose check passes, before anything is written: a busy
    // machine may read the acquire's reply past a short TTL's deadline; such
    // a guard is dropped (freeing the permit) and the acquire tried again.
    let give_up = tokio::time::Instant::now() + HANG;
    let (guard, fence) = loop {
        let guard = bounded(
            "the child's permit acquire",
            client.acquire(
                KEY,
                limit(LIMIT),
                AcquireOptions::new(ctx.profile().short_ttl).wait_up_to(HANG),
            ),
        )
        .await
        .expect("the child's permit acquire");
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
        resource.write(fence, "child").await,
        Entry::Accepted { inside: 1 }
    );
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
    let line = match resource.write(fence, "child-after-pause").await {
        Entry::Accepted { inside } => format!("WROTE accepted inside={inside}"),
        Entry::Refused { higher } => format!("WROTE refused {}", join(&higher)),
    };
    report(&line);
    // The release answers NotHeld (or fails): not this case's concern.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), guard.release()).await;
}
