//! Bad input is a typed error before any request reaches the backend.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, LeaseId, LockClient, LockError, LockKey, Ttl};

use crate::Ctx;
use crate::fault::CountingStore;

async fn counted(ctx: &Ctx) -> (Arc<CountingStore>, LockClient<CountingStore>) {
    let counting = Arc::new(CountingStore::new(ctx.store().await));
    (Arc::clone(&counting), LockClient::from_arc(counting))
}

/// Empty, 1025-byte and NUL-carrying keys fail with `InvalidKey`, unsent.
pub async fn invalid_keys_are_rejected_before_any_request(ctx: Ctx) {
    let (counting, client) = counted(&ctx).await;
    let options = AcquireOptions::new(Duration::from_secs(10));
    for bad in [String::new(), "x".repeat(1025), "nul\0inside".to_string()] {
        let err = client.acquire(bad.as_str(), options).await.unwrap_err();
        assert!(
            matches!(err, LockError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
        let err = client.inspect(bad.as_str()).await.unwrap_err();
        assert!(
            matches!(err, LockError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
        assert!(LockKey::new(&bad).is_err());
    }
    assert_eq!(counting.calls(), 0, "an invalid key reached the backend");
}

/// Zero and over-maximum TTLs fail with `InvalidTtl`, unsent.
pub async fn invalid_ttls_are_rejected_before_any_request(ctx: Ctx) {
    let (counting, client) = counted(&ctx).await;
    for bad in [
        Duration::ZERO,
        Ttl::MAX.as_duration() + Duration::from_millis(1),
        Duration::MAX,
    ] {
        let err = client
            .acquire("valid-key", AcquireOptions::new(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LockError::InvalidTtl { .. }),
            "{bad:?}: {err}"
        );
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(counting.calls(), 0, "an invalid TTL reached the backend");
}

/// A lease id that is not 32 hex digits fails to parse with `InvalidLeaseId`.
pub async fn malformed_lease_ids_are_rejected(ctx: Ctx) {
    for bad in [
        "",
        "not-a-lease",
        "0123456789abcdef",
        &"z".repeat(32),
        &"f".repeat(33),
    ] {
        let err = bad.parse::<LeaseId>().unwrap_err();
        assert!(matches!(err, LockError::InvalidLeaseId { .. }), "{bad:?}");
        assert!(err.to_string().contains("32 hexadecimal digits"));
    }
    // The text form is what travels through a shell or a job queue: the
    // backend must accept the round-tripped id as the lease's own, and
    // refuse one that differs in a single digit.
    let store = ctx.store().await;
    let k = super::key("lease-id-text");
    let (request, _) = super::must_acquire(&*store, &k, super::long_ttl(&ctx), "alice").await;
    let text = request.lease_id.to_string();
    let parsed: LeaseId = text.parse().unwrap();
    assert_eq!(parsed, request.lease_id);
    let last = if text.ends_with('0') { "1" } else { "0" };
    let near_miss: LeaseId = format!("{}{last}", &text[..31]).parse().unwrap();
    let ttl = Ttl::new(super::long_ttl(&ctx)).unwrap();
    assert_eq!(
        store.renew(&k, near_miss, ttl).await.unwrap(),
        lockstore_api::RenewOutcome::Lost,
        "a lease id one digit off renewed the lease"
    );
    assert_eq!(
        store.release(&k, near_miss).await.unwrap(),
        lockstore_api::ReleaseOutcome::NotHeld
    );
    assert_eq!(
        store.renew(&k, parsed, ttl).await.unwrap(),
        lockstore_api::RenewOutcome::Renewed,
        "the lease id parsed back from its text was not the lease's own"
    );
    assert_eq!(
        store.release(&k, parsed).await.unwrap(),
        lockstore_api::ReleaseOutcome::Released
    );
}
