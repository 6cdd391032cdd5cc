//! Fencing tokens survive what Redis forgets: a restart without persistence,
//! and the expiry of idle records.

mod common;

use std::time::Duration;

use common::PrivateServer;
use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, LeaseId, LockError, LockKey, LockStore,
    OwnerLabel, Ttl,
};
use lockstore_redis::RedisStore;
use redis::AsyncCommands;

fn request(key: &LockKey) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(60_000).unwrap(),
        owner: OwnerLabel::new("restart-test").unwrap(),
    }
}

/// Acquires, retrying retryable errors for a while (the connection manager
/// reconnects after a restart).
async fn acquire(store: &RedisStore, request: &AcquireRequest) -> FencingToken {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.try_acquire(request).await {
            Ok(AcquireOutcome::Acquired { fence }) => return fence,
            Ok(AcquireOutcome::Held(holder)) => panic!("unexpectedly held: {holder:?}"),
            Err(err) if err.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("acquire failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_increases_across_a_restart_that_lost_all_data() {
    let mut server = PrivateServer::start().await;
    let store = RedisStore::connect(server.url()).await.unwrap();
    let key = LockKey::new("survives-restart").unwrap();

    let t1 = acquire(&store, &request(&key)).await;
    server.restart().await;
    // The old lease is gone with the data; a new one must still fence it out.
    let t2 = acquire(&store, &request(&key)).await;
    assert!(t2 > t1, "token went from {t1} to {t2} across a restart");

    // And the scripts were reloaded transparently (NOSCRIPT → SCRIPT LOAD).
    let t3 = acquire(&store, &request(&LockKey::new("another").unwrap())).await;
    assert!(t3 > FencingToken::new(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_increases_after_the_idle_record_expired() {
    let server = PrivateServer::start().await;
    let retention = Duration::from_millis(200);
    let store = RedisStore::builder(server.url())
        .idle_retention(retention)
        .connect()
        .await
        .unwrap();
    let key = LockKey::new("idle").unwrap();
    let mut redis = common::raw_connection(&server.url()).await;

    // A burst first, so the counter runs as far ahead of the clock as it can.
    let mut last = FencingToken::new(0);
    for _ in 0..500 {
        let req = request(&key);
        let fence = acquire(&store, &req).await;
        assert!(fence > last);
        last = fence;
        store.release(&key, req.lease_id).await.unwrap();
    }
    assert!(
        redis
            .exists::<_, bool>(store.record_key(&key))
            .await
            .unwrap(),
        "the counter is kept after release"
    );

    tokio::time::sleep(retention + Duration::from_millis(300)).await;
    assert!(
        !redis
            .exists::<_, bool>(store.record_key(&key))
            .await
            .unwrap(),
        "an idle record must expire so memory stays bounded"
    );
    let after = acquire(&store, &request(&key)).await;
    assert!(
        after > last,
        "token went from {last} to {after} after the record expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_a_retryable_error() {
    let mut server = PrivateServer::start().await;
    let store = RedisStore::builder(server.url())
        .reconnect_retries(0)
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    server.stop().await;
    let err = store
        .try_acquire(&request(&LockKey::new("k").unwrap()))
        .await;
    match err {
        Err(err @ LockError::Backend { .. }) => assert!(err.is_retryable(), "{err}"),
        other => panic!("expected a retryable backend error, got {other:?}"),
    }
}
