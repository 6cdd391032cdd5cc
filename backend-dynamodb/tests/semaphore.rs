//! DynamoDB specifics of semaphores, on moto and on dynalite: requests per
//! operation, where the item lives, the cleanup time (it covers the fence
//! and every live permit), fences across deletion of the item, a fence
//! ahead of a renewer's clock, and the refusal of a skew-free store. The
//! promises themselves are the shared semaphore suite's
//! (`conformance.rs`, `dynamodb_semaphore::…` and `dynalite_semaphore::…`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use common::Server;
use common::counting::RequestCounter;
use lockstore_api::semaphore::{PermitLimit, PermitOutcome, PermitRequest, SemaphoreStore};
use lockstore_api::{
    FencingToken, LeaseId, LockError, LockKey, OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl,
};
use lockstore_dynamodb::{DEFAULT_CLEANUP_AFTER, DynamoDbStore, TakeoverMode, WallClock};

const LONG: Duration = Duration::from_secs(3600);

/// A wall clock this far ahead of the host's.
#[derive(Debug)]
struct AheadClock(Duration);

impl WallClock for AheadClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.0
    }
}

fn permit(key: &LockKey, limit: u32, ttl: Duration, owner: &str) -> PermitRequest {
    PermitRequest {
        key: key.clone(),
        permit_id: LeaseId::random(),
        limit: PermitLimit::new(limit).unwrap(),
        ttl: Ttl::new(ttl).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
    }
}

async fn granted(store: &DynamoDbStore, request: &PermitRequest) -> FencingToken {
    match store.try_acquire_permit(request).await.unwrap() {
        PermitOutcome::Granted { fence } => fence,
        PermitOutcome::Refused(permits) => panic!("refused: {permits:?}"),
    }
}

fn raw_client(server: Server, counter: Option<RequestCounter>) -> Client {
    let mut config = common::sdk_config_builder_on(server);
    if let Some(counter) = counter {
        config = config.interceptor(counter);
    }
    Client::from_conf(config.build())
}

/// A store on `server`'s shared table under a fresh prefix, whose requests
/// `counter` counts.
async fn counted_store(server: Server, prefix: &str) -> (DynamoDbStore, RequestCounter) {
    common::ensure_table_on(server).await;
    let counter = RequestCounter::default();
    let store = common::builder_on(server, &server.table(common::TABLE))
        .key_prefix(prefix)
        .build_with_client(raw_client(server, Some(counter.clone())))
        .unwrap();
    counter.take();
    (store, counter)
}

async fn raw_item(
    server: Server,
    store: &DynamoDbStore,
    pk: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    raw_client(server, None)
        .get_item()
        .table_name(store.table_name())
        .key(store.partition_key(), AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn num(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> u64 {
    match item.get(name) {
        Some(AttributeValue::N(text)) => text.parse().unwrap(),
        other => panic!("{name} is {other:?}"),
    }
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(op, n)| ((*op).to_owned(), *n)).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn requests_per_operation(server: Server) {
    let (store, counter) = counted_store(server, &common::fresh_prefix("sem-count")).await;
    let k = common::key("counted");
    let alice = permit(&k, 1, LONG, "alice");
    let fence = granted(&store, &alice).await;
    assert_eq!(
        counter.take(),
        counts(&[("GetItem", 1), ("UpdateItem", 1)]),
        "acquire"
    );
    match store
        .try_acquire_permit(&permit(&k, 1, LONG, "bob"))
        .await
        .unwrap()
    {
        PermitOutcome::Refused(permits) => assert_eq!(permits.holders[0].fence(), fence),
        other => panic!("{other:?}"),
    }
    assert_eq!(counter.take(), counts(&[("GetItem", 1)]), "refused acquire");
    assert_eq!(
        store
            .renew_permit(&k, alice.permit_id, Ttl::new(LONG).unwrap())
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    assert_eq!(counter.take(), counts(&[("UpdateItem", 1)]), "renew");
    assert!(store.inspect_permits(&k).await.unwrap().is_some());
    assert_eq!(counter.take(), counts(&[("GetItem", 1)]), "inspect");
    assert_eq!(
        store.release_permit(&k, alice.permit_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(counter.take(), counts(&[("UpdateItem", 1)]), "release");
    assert_eq!(
        store.release_permit(&k, alice.permit_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(
        counter.take(),
        counts(&[("UpdateItem", 1)]),
        "second release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_requests_per_operation() {
    requests_per_operation(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_requests_per_operation() {
    requests_per_operation(Server::Dynalite).await;
}

/// The semaphore item is its own, apart from the lock item and the run
/// record of the same key; it holds the layout the docs describe.
async fn item_is_apart_and_as_documented(server: Server) {
    let (store, _) = counted_store(server, &common::fresh_prefix("sem-item")).await;
    let k = common::key("apart");
    let pk = store.semaphore_item_key(&k).unwrap();
    assert_eq!(pk, format!("{}\0sem", store.item_key(&k)));
    let request = permit(&k, 3, LONG, "alice");
    let fence = granted(&store, &request).await;
    assert!(
        raw_item(server, &store, &store.item_key(&k))
            .await
            .is_none(),
        "a permit created the lock item"
    );
    let item = raw_item(server, &store, &pk)
        .await
        .expect("the semaphore item");
    assert_eq!(num(&item, "permit_limit"), 3);
    assert_eq!(num(&item, "fence"), fence.get());
    let Some(AttributeValue::M(permits)) = item.get("permits") else {
        panic!("no permit map: {item:?}");
    };
    let Some(AttributeValue::M(entry)) = permits.get(&request.permit_id.to_string()) else {
        panic!("no entry for the permit: {permits:?}");
    };
    assert_eq!(num(entry, "fence"), fence.get());
    assert_eq!(entry.get("owner"), Some(&AttributeValue::S("alice".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_item_is_apart_and_as_documented() {
    item_is_apart_and_as_documented(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_item_is_apart_and_as_documented() {
    item_is_apart_and_as_documented(Server::Dynalite).await;
}

/// The cleanup time covers the fence and every live permit: a renewal with
/// a short TTL does not lower it below a long permit's expiry.
async fn cleanup_time_covers_fence_and_live_permits(server: Server) {
    let (store, counter) = counted_store(server, &common::fresh_prefix("sem-cleanup")).await;
    let k = common::key("cleanup");
    let pk = store.semaphore_item_key(&k).unwrap();
    let cleanup = store.cleanup_attribute().to_owned();
    let after = DEFAULT_CLEANUP_AFTER.as_secs();
    let before = now_secs();
    let long = permit(&k, 2, Duration::from_secs(6 * 3600), "long");
    let fence = granted(&store, &long).await;
    let short = permit(&k, 2, Duration::from_secs(5), "short");
    granted(&store, &short).await;
    let item = raw_item(server, &store, &pk).await.unwrap();
    let at = num(&item, &cleanup);
    assert!(
        at >= before + 6 * 3600 + after,
        "cleanup {at} before the long permit's end"
    );
    assert!(at >= fence.get() / 1_000_000 + after);
    counter.take();
    assert_eq!(
        store
            .renew_permit(
                &k,
                short.permit_id,
                Ttl::new(Duration::from_secs(5)).unwrap()
            )
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    // The first attempt would have lowered the cleanup time: refused, then
    // sent again with the stored one (dynalite reads it with a GetItem).
    let expected = match server {
        Server::Moto => counts(&[("UpdateItem", 2)]),
        Server::Dynalite => counts(&[("GetItem", 1), ("UpdateItem", 2)]),
    };
    assert_eq!(counter.take(), expected);
    let item = raw_item(server, &store, &pk).await.unwrap();
    assert_eq!(
        num(&item, &cleanup),
        at,
        "the renewal moved the cleanup time"
    );
    assert_eq!(
        store.release_permit(&k, long.permit_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    let item = raw_item(server, &store, &pk).await.unwrap();
    assert_eq!(num(&item, &cleanup), at, "a release moved the cleanup time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_cleanup_time_covers_fence_and_live_permits() {
    cleanup_time_covers_fence_and_live_permits(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_cleanup_time_covers_fence_and_live_permits() {
    cleanup_time_covers_fence_and_live_permits(Server::Dynalite).await;
}

/// An item deleted as DynamoDB TTL would (after its cleanup time) is
/// re-created with a fence from the clock, above every earlier one; and an
/// item whose fence is ahead of a renewer's clock (its creator's clock was
/// ahead) gets a cleanup time that covers that fence.
async fn fences_survive_deletion_and_a_clock_ahead(server: Server) {
    let prefix = common::fresh_prefix("sem-fence");
    let (store, _) = counted_store(server, &prefix).await;
    let k = common::key("fence");
    let pk = store.semaphore_item_key(&k).unwrap();
    let first = permit(&k, 2, LONG, "first");
    let fence = granted(&store, &first).await;
    store.release_permit(&k, first.permit_id).await.unwrap();
    raw_client(server, None)
        .delete_item()
        .table_name(store.table_name())
        .key(store.partition_key(), AttributeValue::S(pk.clone()))
        .send()
        .await
        .unwrap();
    let again = granted(&store, &permit(&k, 2, LONG, "again")).await;
    assert!(
        again > fence,
        "fence {again} after the deleted item's {fence}"
    );

    // A client three hours ahead re-creates the item of another key.
    let k = common::key("ahead");
    let pk = store.semaphore_item_key(&k).unwrap();
    let ahead = common::builder_on(server, &server.table(common::TABLE))
        .key_prefix(prefix)
        .wall_clock(AheadClock(Duration::from_secs(3 * 3600)))
        .build()
        .await
        .unwrap();
    assert_eq!(ahead.semaphore_item_key(&k).unwrap(), pk);
    let early = permit(&k, 2, Duration::from_secs(1), "early");
    let high = granted(&ahead, &early).await;
    ahead.release_permit(&k, early.permit_id).await.unwrap();
    let mine = permit(&k, 2, Duration::from_secs(5), "mine");
    let fence = granted(&store, &mine).await;
    assert!(fence > high);
    assert_eq!(
        store
            .renew_permit(
                &k,
                mine.permit_id,
                Ttl::new(Duration::from_secs(5)).unwrap()
            )
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    let item = raw_item(server, &store, &pk).await.unwrap();
    let at = num(&item, store.cleanup_attribute());
    assert!(
        at >= fence.get().div_ceil(1_000_000) + DEFAULT_CLEANUP_AFTER.as_secs(),
        "cleanup {at} does not cover fence {fence}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_fences_survive_deletion_and_a_clock_ahead() {
    fences_survive_deletion_and_a_clock_ahead(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_fences_survive_deletion_and_a_clock_ahead() {
    fences_survive_deletion_and_a_clock_ahead(Server::Dynalite).await;
}

/// A skew-free store has no semaphores: each operation is a config error
/// naming the fix, before any request (the endpoint here answers nothing).
#[tokio::test]
async fn skew_free_store_refuses_semaphores_before_any_request() {
    let store = DynamoDbStore::builder("nowhere")
        .endpoint_url("http://127.0.0.1:1")
        .region("us-east-1")
        .static_credentials("test", "test")
        .takeover(TakeoverMode::SkewFree)
        .build()
        .await
        .unwrap();
    let k = common::key("skew-free");
    let id = LeaseId::random();
    let ttl = Ttl::new(LONG).unwrap();
    let results = [
        store
            .try_acquire_permit(&permit(&k, 2, LONG, "alice"))
            .await
            .map(|_| ()),
        store.renew_permit(&k, id, ttl).await.map(|_| ()),
        store.release_permit(&k, id).await.map(|_| ()),
        store.inspect_permits(&k).await.map(|_| ()),
        store.semaphore_item_key(&k).map(|_| ()),
    ];
    for result in results {
        match result {
            Err(LockError::Config { message, .. }) => {
                assert!(message.contains("WallClock"), "{message}")
            }
            other => panic!("a skew-free store must refuse semaphores, got {other:?}"),
        }
    }
}
