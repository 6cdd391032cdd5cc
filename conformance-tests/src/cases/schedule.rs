//! Scheduled jobs on many replicas: each tick runs once
//! ([`LockClient::run_tick`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore_api::schedule::{Tick, TickOptions, tick_key};
use lockstore_api::{LockClient, LockStore, OwnerLabel};

use super::{long_ttl, must_acquire};
use crate::Ctx;

/// A tick far from "now": a scheduled time is only a name here.
fn tick(second: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_652_300 + second)
}

async fn replica(ctx: &Ctx, name: &str) -> LockClient {
    replica_on(ctx.store().await, name)
}

fn replica_on(store: Arc<dyn LockStore>, name: &str) -> LockClient {
    LockClient::from_arc(store).with_owner(OwnerLabel::new(name).unwrap())
}

/// Three replicas fire for the same tick at once, and a fourth late: the job
/// runs once, and the others are told who has the tick. Another tick of the
/// same job is its own.
pub async fn scheduled_tick_runs_on_one_replica(ctx: Ctx) {
    let runs = Arc::new(AtomicU32::new(0));
    // Held at least a TTL no case waits out: the late replica comes well
    // inside it however slow the machine.
    let options = TickOptions::new(long_ttl(&ctx)).hold_at_least(long_ttl(&ctx));
    let fire = |name: &'static str, second: u64| {
        let (ctx, runs) = (ctx.clone(), Arc::clone(&runs));
        async move {
            replica(&ctx, name)
                .await
                .run_tick("report", tick(second), options, |_| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                })
                .await
                .unwrap()
        }
    };
    let ticks = [
        tokio::spawn(fire("replica-a", 0)),
        tokio::spawn(fire("replica-b", 0)),
        tokio::spawn(fire("replica-c", 0)),
    ];
    let mut ran = 0;
    for tick in ticks {
        match tick.await.unwrap() {
            Tick::Ran { .. } => ran += 1,
            Tick::Skipped { holder } => {
                let holder = holder.expect("a skipped tick names who has it");
                assert!(holder.owner().starts_with("replica-"), "{holder:?}");
            }
        }
    }
    assert_eq!(
        ran, 1,
        "replicas that fired for one tick ran it {ran} times"
    );
    // A replica whose timer fired late, after the run ended: still taken.
    assert!(
        matches!(fire("replica-late", 0).await, Tick::Skipped { .. }),
        "a late replica ran a tick another had finished within its hold-at-least"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The next tick of the same job is its own.
    let next = fire("replica-a", 1).await;
    assert!(
        matches!(next, Tick::Ran { .. }),
        "the next tick was refused: {next:?}"
    );
}

/// Without a hold-at-least a finished tick is free at once; with one, once it
/// has passed (ShedLock's semantics; the ledger is for "never again").
pub async fn scheduled_tick_is_free_once_its_holds_are_over(ctx: Ctx) {
    let short = ctx.profile().short_ttl;
    let a = replica(&ctx, "replica-a").await;
    let b = replica(&ctx, "replica-b").await;
    let at_once = TickOptions::new(long_ttl(&ctx));
    let Tick::Ran { fence: first, .. } = a
        .run_tick("free", tick(0), at_once, |_| async {})
        .await
        .unwrap()
    else {
        panic!("a free tick was refused");
    };
    let again = b
        .run_tick("free", tick(0), at_once, |_| async {})
        .await
        .unwrap();
    let Tick::Ran { fence: second, .. } = again else {
        panic!("a finished tick without a hold-at-least stayed taken: {again:?}");
    };
    assert!(second > first);

    let held = TickOptions::new(long_ttl(&ctx)).hold_at_least(short);
    assert!(matches!(
        a.run_tick("held", tick(0), held, |_| async {})
            .await
            .unwrap(),
        Tick::Ran { .. }
    ));
    // (A store that takes an expired lease over only after watching it for
    // a TTL starts watching here.)
    let held_key = tick_key("held", tick(0)).unwrap();
    ctx.watch_lease(&**b.store(), &held_key).await;
    ctx.sleep_past_short_ttl().await;
    let after = b
        .run_tick("held", tick(0), held, |_| async {})
        .await
        .unwrap();
    assert!(
        matches!(after, Tick::Ran { .. }),
        "a tick stayed taken past its hold-at-least: {after:?}"
    );
}

/// A replica that crashed while running a tick (its lease no longer
/// renewed) frees the tick within the hold-at-most, the lease's TTL.
pub async fn scheduled_tick_of_a_crashed_replica_is_free_after_hold_at_most(ctx: Ctx) {
    let store = ctx.store().await;
    let short = ctx.profile().short_ttl;
    let k = tick_key("crashing", tick(0)).unwrap();
    let (_, crashed) = must_acquire(&*store, &k, short, "crashed").await;
    ctx.watch_lease(&*store, &k).await;
    ctx.sleep_past_short_ttl().await;
    let late = replica_on(store, "replica-b")
        .run_tick("crashing", tick(0), TickOptions::new(short), |_| async {})
        .await
        .unwrap();
    match late {
        Tick::Ran { fence, .. } => assert!(fence > crashed, "fence {fence} after {crashed}"),
        Tick::Skipped { holder } => {
            panic!("a crashed replica's tick stayed taken past its hold-at-most: {holder:?}")
        }
    }
}
