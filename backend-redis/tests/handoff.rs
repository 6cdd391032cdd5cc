//! A release wakes a blocked waiter by notification, not by its next poll.

mod common;

use std::time::Duration;

use lockstore_api::{AcquireOptions, Backoff, LockClient};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lock_to_a_blocked_waiter_at_once() {
    let prefix = common::fresh_prefix("handoff");
    let connect = || async {
        lockstore_redis::RedisStore::builder(common::url())
            .key_prefix(prefix.clone())
            .connect()
            .await
            .unwrap()
    };
    let holder = LockClient::new(connect().await);
    // With a 30 s backoff the waiter effectively never polls: only the
    // notification can wake it in time.
    let waiter = LockClient::new(connect().await).with_backoff(Backoff::new(
        Duration::from_secs(30),
        Duration::from_secs(30),
    ));
    let ttl = Duration::from_secs(30);

    let held = holder
        .acquire_lease("handoff", AcquireOptions::new(ttl))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let lease = waiter
            .acquire_lease("handoff", AcquireOptions::new(ttl).wait_forever())
            .await;
        (lease, Instant::now())
    });
    // Let the waiter be refused and settle on its signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the waiter got a held lock");

    let released_at = Instant::now();
    holder.release(&held).await.unwrap();
    let (lease, acquired_at) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter was not woken by the release")
        .unwrap();
    let lease = lease.unwrap();
    let hand_off = acquired_at - released_at;
    assert!(lease.fence() > held.fence());
    // Generous: on a loaded 2-core CI box a round trip can take tens of ms.
    assert!(
        hand_off < Duration::from_millis(500),
        "hand-off took {hand_off:?}"
    );
    eprintln!("hand-off after release: {hand_off:?}");
}
