//! The client's acquire loop when replies are lost or never come: the error
//! it reports, how long one attempt may take, and what it leaves behind.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, LockClient, LockError};
use tokio::time::timeout;

use super::{key, long_ttl, must_acquire};
use crate::Ctx;
use crate::fault::{FlakyStore, PartitionableStore};

/// A non-waiting acquire whose reply was lost after the grant fails with the
/// backend's retryable error and releases the grant it could not see, so the
/// key is not held for a TTL by a lease id nobody knows.
pub async fn acquire_with_lost_reply_leaves_no_orphan(ctx: Ctx) {
    let store = ctx.store().await;
    let flaky = LockClient::from_arc(Arc::new(FlakyStore::new(Arc::clone(&store), u64::MAX)));
    let outcome = flaky
        .acquire("lost-reply", AcquireOptions::new(long_ttl(&ctx)))
        .await;
    assert!(
        matches!(
            outcome,
            Err(LockError::Backend {
                retryable: true,
                ..
            })
        ),
        "{outcome:?}"
    );
    must_acquire(&*store, &key("lost-reply"), long_ttl(&ctx), "bob").await;
}

/// A waiting acquire that gives up after retryable errors reports the
/// backend's error, not a `Timeout` that says the key was held, and leaves
/// no orphan grant behind.
pub async fn acquire_giving_up_after_errors_reports_the_backend_error(ctx: Ctx) {
    let store = ctx.store().await;
    let flaky = LockClient::from_arc(Arc::new(FlakyStore::new(Arc::clone(&store), u64::MAX)));
    let outcome = flaky
        .acquire(
            "outage",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(ctx.profile().short_ttl),
        )
        .await;
    match outcome {
        Err(err @ LockError::Backend { .. }) => assert!(err.is_retryable(), "{err}"),
        other => panic!("an outage was reported as {other:?}"),
    }
    must_acquire(&*store, &key("outage"), long_ttl(&ctx), "bob").await;
}

/// An acquire retried after a lost reply finds its own grant (promise 7
/// through the client): one holder, the same fence.
pub async fn acquire_retried_after_lost_reply_keeps_its_grant(ctx: Ctx) {
    let store = ctx.store().await;
    let flaky = LockClient::from_arc(Arc::new(FlakyStore::new(Arc::clone(&store), 1)));
    let guard = flaky
        .acquire(
            "retried",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(long_ttl(&ctx)),
        )
        .await
        .expect("the retry with the same lease id did not find its grant");
    let holder = store
        .inspect(guard.key())
        .await
        .unwrap()
        .expect("the key is not held");
    assert_eq!(holder.fence(), guard.fence());
    guard.release().await.unwrap();
}

/// One attempt may not outlast the caller's wait: a backend that never
/// answers turns into a retryable error soon after the wait, not a hang.
pub async fn acquire_attempt_is_bounded_by_the_wait(ctx: Ctx) {
    let store = ctx.store().await;
    let partitioned = Arc::new(PartitionableStore::new(store));
    partitioned.cut();
    let client = LockClient::from_arc(partitioned);
    let wait = ctx.profile().short_ttl;
    // Generous by construction: the failure this catches is a hang forever.
    let outcome = timeout(
        wait + Duration::from_secs(30),
        client.acquire(
            "never-answers",
            AcquireOptions::new(long_ttl(&ctx)).wait_up_to(wait),
        ),
    )
    .await
    .expect("an acquire attempt outlasted the caller's wait");
    assert!(
        matches!(
            outcome,
            Err(LockError::Backend {
                retryable: true,
                ..
            })
        ),
        "{outcome:?}"
    );
}
