//! Each operation is exactly one command on the wire: a counting proxy sits
//! between the store and the server and records every command it forwards.

mod common;

use common::CountingProxy;
use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_redis::RedisStore;

fn request(key: &LockKey, owner: &str) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_one_command_on_the_wire() {
    let url = common::url();
    let upstream = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
        .to_string();
    let proxy = CountingProxy::start(upstream.clone()).await;
    let proxied_url = url.replacen(&upstream, &proxy.addr.to_string(), 1);
    assert_ne!(
        proxied_url, url,
        "could not route {upstream} through the proxy"
    );
    let store = RedisStore::builder(proxied_url)
        .key_prefix(common::fresh_prefix("round-trips"))
        .connect()
        .await
        .unwrap();
    let key = LockKey::new("one-round-trip").unwrap();
    let mine = request(&key, "me");
    let theirs = request(&key, "them");

    // Warm up: the first call of each script may add a SCRIPT LOAD.
    store.try_acquire(&mine).await.unwrap();
    store.renew(&key, mine.lease_id, mine.ttl).await.unwrap();
    store.try_acquire(&theirs).await.unwrap();
    store.inspect(&key).await.unwrap();
    store.release(&key, mine.lease_id).await.unwrap();
    proxy.clear();

    let AcquireOutcome::Acquired { .. } = store.try_acquire(&mine).await.unwrap() else {
        panic!("free key refused");
    };
    assert_eq!(proxy.take(), ["EVALSHA"], "acquire");

    let AcquireOutcome::Held(holder) = store.try_acquire(&theirs).await.unwrap() else {
        panic!("held key granted twice");
    };
    assert_eq!(proxy.take(), ["EVALSHA"], "failed acquire");
    assert_eq!(
        holder.owner(),
        "me",
        "the refusal names the holder in the same reply"
    );

    store.renew(&key, mine.lease_id, mine.ttl).await.unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "renew");

    store.inspect(&key).await.unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "inspect");

    store.release(&key, mine.lease_id).await.unwrap();
    assert_eq!(proxy.take(), ["EVALSHA"], "release");
}
