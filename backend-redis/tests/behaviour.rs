//! Backend-specific behaviour beyond the shared suite: the record layout,
//! error mapping and configuration.

mod common;

use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockError, LockKey, LockStore, OwnerLabel,
    ReleaseOutcome, RenewOutcome, Ttl,
};
use lockstore_redis::RedisStore;
use redis::AsyncCommands;

fn request(key: &str, ttl_ms: u64) -> AcquireRequest {
    AcquireRequest {
        key: LockKey::new(key).unwrap(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(ttl_ms).unwrap(),
        owner: OwnerLabel::new("behaviour-test").unwrap(),
    }
}

fn fence(outcome: AcquireOutcome) -> u64 {
    match outcome {
        AcquireOutcome::Acquired { fence } => fence.get(),
        AcquireOutcome::Held(holder) => panic!("held by {holder:?}"),
    }
}

#[tokio::test]
async fn the_basic_cycle_and_a_refusal_that_names_the_holder() {
    let store = common::store("basic").await;
    let mine = request("k", 10_000);
    let first = fence(store.try_acquire(&mine).await.unwrap());
    let AcquireOutcome::Held(holder) = store.try_acquire(&request("k", 10_000)).await.unwrap()
    else {
        panic!("granted twice");
    };
    assert_eq!(holder.owner(), "behaviour-test");
    assert_eq!(holder.fence().get(), first);
    assert!(
        holder.expires_in() > Duration::from_secs(9)
            && holder.expires_in() <= Duration::from_secs(10)
    );
    let inspected = store.inspect(&mine.key).await.unwrap().expect("held");
    assert_eq!(
        (inspected.owner(), inspected.fence()),
        (holder.owner(), holder.fence())
    );
    assert_eq!(
        store
            .renew(&mine.key, mine.lease_id, mine.ttl)
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    assert_eq!(
        store
            .renew(&mine.key, LeaseId::random(), mine.ttl)
            .await
            .unwrap(),
        RenewOutcome::Lost
    );
    assert_eq!(
        store.release(&mine.key, LeaseId::random()).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(
        store.release(&mine.key, mine.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.release(&mine.key, mine.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(store.inspect(&mine.key).await.unwrap(), None);
    let second = fence(store.try_acquire(&request("k", 10_000)).await.unwrap());
    assert!(second > first);
}

#[tokio::test]
async fn a_retried_acquire_by_the_same_lease_keeps_its_fence() {
    let store = common::store("retry").await;
    let mine = request("k", 10_000);
    let first = fence(store.try_acquire(&mine).await.unwrap());
    let again = fence(store.try_acquire(&mine).await.unwrap());
    assert_eq!(first, again);
}

#[tokio::test]
async fn the_record_is_one_hash_with_the_key_as_hash_tag_and_a_bounded_life() {
    let store = common::store("layout").await;
    let mine = request("jobs/{odd}key", 5_000);
    let token = fence(store.try_acquire(&mine).await.unwrap());
    let record_key = store.record_key(&mine.key);
    assert!(record_key.ends_with("{jobs/{odd}key}"), "{record_key}");
    let mut redis = common::raw_connection(&common::url()).await;
    let fields: std::collections::HashMap<String, String> =
        redis.hgetall(&record_key).await.unwrap();
    assert_eq!(fields["lease_id"], mine.lease_id.to_string());
    assert_eq!(fields["fence"], token.to_string());
    let pttl: i64 = redis.pttl(&record_key).await.unwrap();
    assert!(
        pttl > 5_000,
        "record expires with TTL + retention, got {pttl} ms"
    );

    // A later version's ledger fields do not disturb the lock.
    let _: () = redis.hset(&record_key, "status", "running").await.unwrap();
    assert_eq!(
        store.release(&mine.key, mine.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    let fields: std::collections::HashMap<String, String> =
        redis.hgetall(&record_key).await.unwrap();
    assert_eq!(fields.get("status").map(String::as_str), Some("running"));
    assert!(!fields.contains_key("lease_id"));
    assert!(
        fence(
            store
                .try_acquire(&request("jobs/{odd}key", 5_000))
                .await
                .unwrap()
        ) > token
    );
}

#[tokio::test]
async fn a_foreign_value_under_a_lock_key_is_a_permanent_error() {
    let store = common::store("wrongtype").await;
    let mine = request("k", 5_000);
    let mut redis = common::raw_connection(&common::url()).await;
    let _: () = redis
        .set(store.record_key(&mine.key), "not a hash")
        .await
        .unwrap();
    let err = store.try_acquire(&mine).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Backend {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn bad_urls_are_config_errors_that_hide_the_password() {
    let err = RedisStore::connect("redis://user:hunter2@host:6379/notadb")
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .reconnect_retries(0)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn namespaces_do_not_share_locks() {
    let a = common::store("ns-a").await;
    let b = common::store("ns-b").await;
    fence(a.try_acquire(&request("k", 5_000)).await.unwrap());
    fence(b.try_acquire(&request("k", 5_000)).await.unwrap());
}

/// Review M6: a server that may evict keys is reported at connect time —
/// refused under `EvictionCheck::Refuse`, warned about by default — since an
/// evicted live lease means two holders.
#[tokio::test]
async fn eviction_policy_is_checked_at_connect() {
    let server = common::PrivateServer::start().await;
    let store = RedisStore::connect(server.url()).await.unwrap();
    assert_eq!(store.eviction_policy(), Some("noeviction"));

    let mut raw = common::raw_connection(&server.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut raw)
        .await
        .unwrap();
    let refused = RedisStore::builder(server.url())
        .eviction_check(lockstore_redis::EvictionCheck::Refuse)
        .connect()
        .await
        .expect_err("a server that evicts is refused");
    assert!(
        matches!(&refused, LockError::Config { message, .. }
            if message.contains("volatile-lru") && message.contains("noeviction")),
        "{refused}"
    );
    let warned = RedisStore::connect(server.url()).await.unwrap();
    assert_eq!(warned.eviction_policy(), Some("volatile-lru"));
    let unchecked = RedisStore::builder(server.url())
        .eviction_check(lockstore_redis::EvictionCheck::Off)
        .connect()
        .await
        .unwrap();
    assert_eq!(unchecked.eviction_policy(), None);
}

/// Review m5: a brace in the key prefix is refused before connecting, and a
/// huge idle retention is clamped instead of failing every acquire.
#[tokio::test]
async fn braces_in_the_prefix_are_refused_and_retention_is_clamped() {
    for prefix in ["app{x}:", "app}", "{"] {
        let err = RedisStore::builder(common::url())
            .key_prefix(prefix)
            .connect()
            .await
            .expect_err("a prefix with a brace is refused");
        assert!(
            matches!(&err, LockError::Config { message, .. } if message.contains("hash tag")),
            "{err}"
        );
    }
    let store = RedisStore::builder(common::url())
        .key_prefix(common::fresh_prefix("retention"))
        .idle_retention(Duration::MAX)
        .connect()
        .await
        .unwrap();
    let lease = request("forever", 60_000);
    fence(store.try_acquire(&lease).await.unwrap());
    assert_eq!(
        store.release(&lease.key, lease.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// `fenced_write::fenced_set` refuses a stale fence and applies a newer one,
/// in one script call on the data's own key (no key prefix).
#[tokio::test]
async fn fenced_set_refuses_a_stale_fence_and_applies_a_newer_one() {
    let store = common::store("fenced-set").await;
    let key = format!("{}report", common::fresh_prefix("fenced-data"));
    common::fenced_set_refuses_stale_fences(&mut store.connection(), &key).await;
}
