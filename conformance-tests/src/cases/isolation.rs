//! Promise 8: keys and namespaces do not interfere; any valid key works.

use std::sync::Arc;

use lockstore_api::{LockClient, LockStore, ReleaseOutcome};

use super::{key, long_ttl, must_acquire, must_be_held};
use crate::Ctx;

/// Holding one key says nothing about another.
pub async fn keys_are_independent(ctx: Ctx) {
    let store = ctx.store().await;
    let lease_ttl = long_ttl(&ctx);
    let (a, b) = (key("a"), key("b"));
    let (alice, _) = must_acquire(&*store, &a, lease_ttl, "alice").await;
    let (bob, _) = must_acquire(&*store, &b, lease_ttl, "bob").await;
    // A key that extends another must not collide with it either.
    must_acquire(&*store, &key("a:b"), lease_ttl, "carol").await;
    assert_eq!(
        store.release(&a, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    must_be_held(&*store, &b, lease_ttl, "dave").await;
    assert_eq!(
        store.release(&b, bob.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// The same key in two namespaces is two locks.
pub async fn namespaces_are_independent(ctx: Ctx) {
    let lease_ttl = long_ttl(&ctx);
    let here = ctx.store().await;
    let there = ctx.other_namespace().await;
    let k = key("shared-name");
    let (alice, _) = must_acquire(&*here, &k, lease_ttl, "alice").await;
    let (bob, _) = must_acquire(&*there, &k, lease_ttl, "bob").await;
    assert_eq!(here.inspect(&k).await.unwrap().unwrap().owner(), "alice");
    assert_eq!(there.inspect(&k).await.unwrap().unwrap().owner(), "bob");
    assert_eq!(
        there.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(
        here.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    must_be_held(&*there, &k, lease_ttl, "carol").await;
    // A second store of the same namespace shares the locks.
    let here_again = ctx.store().await;
    must_acquire(&*here_again, &k, lease_ttl, "dave").await;
    must_be_held(&*here, &k, lease_ttl, "erin").await;
    there.release(&k, bob.lease_id).await.unwrap();
}

/// Keys at the length limit, with Unicode, spaces, braces, quotes, SQL and
/// glob characters are ordinary keys.
pub async fn long_and_unusual_keys_work(ctx: Ctx) {
    let store = ctx.store().await;
    let lease_ttl = long_ttl(&ctx);
    let keys = [
        "k".repeat(1024),
        "ключ/日本語/🔒".to_string(),
        "with space and\ttab".to_string(),
        "{hash}{tag}".to_string(),
        "}{".to_string(),
        "'; DROP TABLE locks; --".to_string(),
        "*?[a-z]%_\\".to_string(),
        "\"quoted\"".to_string(),
    ];
    for k in &keys {
        let k = key(k);
        let (lease, fence) = must_acquire(&*store, &k, lease_ttl, "alice").await;
        let holder = must_be_held(&*store, &k, lease_ttl, "bob").await;
        assert_eq!(holder.fence(), fence, "key {k:?}");
        assert_eq!(
            store.release(&k, lease.lease_id).await.unwrap(),
            ReleaseOutcome::Released
        );
    }
}

/// The client works over `Arc<dyn LockStore>` and in generic code.
pub async fn dyn_lock_store_works(ctx: Ctx) {
    async fn take<S: LockStore + ?Sized>(client: &LockClient<S>, name: &str, ctx: &Ctx) -> u64 {
        let guard = client
            .acquire(name, lockstore_api::AcquireOptions::new(long_ttl(ctx)))
            .await
            .expect("free key");
        let fence = guard.fence().get();
        guard.release().await.expect("release");
        fence
    }
    let store: Arc<dyn LockStore> = ctx.store().await;
    let client: LockClient<dyn LockStore> = LockClient::from_arc(Arc::clone(&store));
    let first = take(&client, "dyn", &ctx).await;
    let second = take(&client.clone(), "dyn", &ctx).await;
    assert!(second > first);
    assert!(!store.backend_name().is_empty());
}
