//! DynamoDB-specific behaviour against a real DynamoDB-compatible server:
//! requests per operation, fencing across TTL deletion, the table helpers,
//! clock handling and error mapping.

mod common;

use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use common::counting::RequestCounter;
use common::{acquired, held, key, request};
use lockstore_api::{
    AcquireOutcome, FencingToken, LockError, LockStore, ReleaseOutcome, RenewOutcome,
};
use lockstore_dynamodb::{DynamoDbStore, TableProblem, TakeoverMode, WallClock};

fn raw_client() -> Client {
    Client::from_conf(common::sdk_config_builder().build())
}

fn fresh_table(name: &str) -> String {
    format!("lockstore_{name}_{:08x}", rand::random::<u32>())
}

/// A table made behind the store's back, with only a partition key and
/// without TTL: what a user might bring, right or wrong.
async fn create_bare_table(table: &str, partition_key: &str, key_type: ScalarAttributeType) {
    raw_client()
        .create_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(partition_key)
                .attribute_type(key_type)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(partition_key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

/// A wall clock off by a fixed amount, to play a client with a skewed clock.
#[derive(Debug)]
struct SkewedClock {
    ahead: Duration,
    behind: Duration,
}

impl WallClock for SkewedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.ahead - self.behind
    }
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_per_acquire_renew_release_and_refused_acquire() {
    common::ensure_table().await;
    let counter = RequestCounter::default();
    let client = Client::from_conf(
        common::sdk_config_builder()
            .interceptor(counter.clone())
            .build(),
    );
    let store = common::builder(common::TABLE)
        .key_prefix(common::fresh_prefix("count"))
        .build_with_client(client)
        .unwrap();
    let k = key("counted");
    counter.take();

    let alice = request(&k, LONG, "alice");
    let fence = acquired(&store, &alice).await;
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1)].into(),
        "acquire"
    );

    let holder = held(&store, &request(&k, LONG, "bob")).await;
    assert_eq!((holder.owner(), holder.fence()), ("alice", fence));
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1)].into(),
        "refused acquire"
    );
    assert_eq!(
        store.holder_reads(),
        0,
        "the server returned the holder with the refusal"
    );

    let renewed = store.renew(&k, alice.lease_id, alice.ttl).await.unwrap();
    assert_eq!(renewed, RenewOutcome::Renewed);
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1)].into(),
        "renew"
    );

    assert_eq!(
        store.inspect(&k).await.unwrap().map(|h| h.fence()),
        Some(fence)
    );
    assert_eq!(
        counter.take(),
        [("GetItem".to_owned(), 1)].into(),
        "inspect"
    );

    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1)].into(),
        "release"
    );

    // Refusals of renew and release are one request too.
    assert_eq!(
        store.renew(&k, alice.lease_id, alice.ttl).await.unwrap(),
        RenewOutcome::Lost
    );
    assert_eq!(
        store.release(&k, alice.lease_id).await.unwrap(),
        ReleaseOutcome::NotHeld
    );
    assert_eq!(counter.take_total(), 2, "lost renew + not-held release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_acquire_is_two_requests_and_keeps_the_fence() {
    // The documented exception: a retry by the holder finds its own lease in
    // the refusal and extends it with a second UpdateItem.
    common::ensure_table().await;
    let counter = RequestCounter::default();
    let client = Client::from_conf(
        common::sdk_config_builder()
            .interceptor(counter.clone())
            .build(),
    );
    let store = common::builder(common::TABLE)
        .key_prefix(common::fresh_prefix("retry"))
        .build_with_client(client)
        .unwrap();
    let k = key("retried");
    let alice = request(&k, LONG, "alice");
    let fence = acquired(&store, &alice).await;
    counter.take();
    assert_eq!(acquired(&store, &alice).await, fence);
    assert_eq!(counter.take(), [("UpdateItem".to_owned(), 2)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_keeps_the_item_and_its_fence() {
    let prefix = common::fresh_prefix("kept");
    let store = common::store(&prefix).await;
    let k = key("kept");
    let alice = request(&k, LONG, "alice");
    let fence = acquired(&store, &alice).await;
    store.release(&k, alice.lease_id).await.unwrap();
    let item = raw_client()
        .get_item()
        .table_name(common::TABLE)
        .key("lock_key", AttributeValue::S(store.item_key(&k)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("a released key keeps its item");
    assert_eq!(
        item.get("fence"),
        Some(&AttributeValue::N(fence.get().to_string()))
    );
    assert!(!item.contains_key("lease_id"), "{item:?}");
    let cleanup: u64 = match item.get("cleanup_at") {
        Some(AttributeValue::N(n)) => n.parse().unwrap(),
        other => panic!("cleanup_at is {other:?}"),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        cleanup > now + 6 * 24 * 3600,
        "cleanup {cleanup} is not about 7 days away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_stay_monotonic_after_the_item_is_deleted() {
    let store = common::store(&common::fresh_prefix("ttl-delete")).await;
    let raw = raw_client();
    let k = key("deleted");
    let delete = || async {
        // What DynamoDB TTL does to an idle item.
        raw.delete_item()
            .table_name(common::TABLE)
            .key("lock_key", AttributeValue::S(store.item_key(&k)))
            .send()
            .await
            .unwrap();
    };
    let mut last = FencingToken::new(0);
    for round in 0..5 {
        let r = request(&k, LONG, "alice");
        let fence = acquired(&store, &r).await;
        assert!(fence > last, "round {round}: fence {fence} after {last}");
        last = fence;
        // Released then deleted, or deleted while held (an abandoned lease
        // whose item was cleaned up): either way the next token is higher.
        if round % 2 == 0 {
            store.release(&k, r.lease_id).await.unwrap();
        }
        delete().await;
        let again = request(&k, LONG, "bob");
        let fence = acquired(&store, &again).await;
        assert!(
            fence > last,
            "round {round}: fence {fence} after deletion, {last} before"
        );
        last = fence;
        store.release(&k, again.lease_id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_table_names_a_missing_table_and_how_to_create_it() {
    let table = fresh_table("missing");
    let store = common::builder(&table).build().await.unwrap();
    let problems = store.table_problems().await.unwrap();
    assert!(
        matches!(&problems[..], [TableProblem::Missing { .. }]),
        "{problems:?}"
    );
    let err = store.check_table().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    assert!(
        text.contains(&table) && text.contains("create_table"),
        "{text}"
    );

    // The operations say the same, as configuration errors.
    let r = request(&key("k"), LONG, "alice");
    for err in [
        store.try_acquire(&r).await.unwrap_err(),
        store.renew(&r.key, r.lease_id, r.ttl).await.unwrap_err(),
        store.release(&r.key, r.lease_id).await.unwrap_err(),
        store.inspect(&r.key).await.unwrap_err(),
    ] {
        assert!(matches!(err, LockError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(&table), "{err}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_table_reports_a_wrong_key_schema() {
    let table = fresh_table("schema");
    create_bare_table(&table, "id", ScalarAttributeType::N).await;
    let store = common::builder(&table)
        .partition_key("YourKey")
        .build()
        .await
        .unwrap();
    let problems = store.table_problems().await.unwrap();
    let text = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, TableProblem::WrongKeySchema { .. })),
        "{problems:?}"
    );
    assert!(
        text.contains("partition key \"id\" (N)") && text.contains("partition key \"YourKey\" (S)"),
        "{text}"
    );
    let err = store.create_table().await.unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    // Operations fail without panicking, and never as "held".
    let err = store
        .try_acquire(&request(&key("k"), LONG, "alice"))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("YourKey"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_table_reports_ttl_off_and_create_table_fixes_it() {
    let table = fresh_table("ttl");
    create_bare_table(&table, "YourKey", ScalarAttributeType::S).await;
    let store = common::builder(&table)
        .partition_key("YourKey")
        .build()
        .await
        .unwrap();
    let problems = store.table_problems().await.unwrap();
    assert!(
        matches!(
            &problems[..],
            [
                TableProblem::TtlDisabled { .. },
                TableProblem::LedgerIndex { .. }
            ]
        ),
        "{problems:?}"
    );
    assert!(
        problems[0].to_string().contains("update-time-to-live"),
        "{}",
        problems[0]
    );

    // The lock works anyway (TTL only cleans up), and create_table turns it on.
    let r = request(&key("k"), LONG, "alice");
    acquired(&store, &r).await;
    store.create_table().await.unwrap();
    store.check_table().await.unwrap();

    let other = common::builder(&table)
        .partition_key("YourKey")
        .cleanup_attribute("expires")
        .build()
        .await
        .unwrap();
    let problems = other.table_problems().await.unwrap();
    assert!(
        matches!(&problems[..], [TableProblem::TtlOnOtherAttribute { found, .. }] if found == "cleanup_at"),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_retryable_error_never_a_lock() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = DynamoDbStore::builder(common::TABLE)
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region("us-east-1")
        .static_credentials("test", "test")
        .operation_timeout(Some(Duration::from_secs(5)))
        .build()
        .await
        .unwrap();
    let err = store
        .try_acquire(&request(&key("k"), LONG, "alice"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Backend {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the SDK error is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_before_any_request() {
    for builder in [
        DynamoDbStore::builder("t"),
        DynamoDbStore::builder("table").partition_key(""),
        DynamoDbStore::builder("table").key_prefix("x".repeat(2000)),
        DynamoDbStore::builder("table").endpoint_url("127.0.0.1:8000"),
        // Review m0: values that used to panic on the first request, or fail
        // every request with a ValidationException.
        DynamoDbStore::builder("table").cleanup_after(Duration::MAX),
        DynamoDbStore::builder("table").cleanup_after(Duration::ZERO),
        DynamoDbStore::builder("table").clock_skew_allowance(Duration::MAX),
        DynamoDbStore::builder("table").partition_key("fence"),
        DynamoDbStore::builder("table").cleanup_attribute("lease_id"),
        DynamoDbStore::builder("table").cleanup_attribute("exec_status"),
    ] {
        let err = builder.build().await.unwrap_err();
        assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    }
}

/// Review m0: prefixes are isolated even when one is the other plus the
/// start of a key (`billing:` + `eu:job` against `billing:eu:` + `job`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_never_share_an_item() {
    common::ensure_table().await;
    let base = common::fresh_prefix("iso");
    let short = common::builder(common::TABLE)
        .key_prefix(format!("{base}:"))
        .build()
        .await
        .unwrap();
    let long = common::builder(common::TABLE)
        .key_prefix(format!("{base}:eu:"))
        .build()
        .await
        .unwrap();
    let joined = key("eu:job");
    let plain = key("job");
    assert_ne!(short.item_key(&joined), long.item_key(&plain));
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        short
            .try_acquire(&request(&joined, ttl, "a"))
            .await
            .unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    assert!(
        matches!(
            long.try_acquire(&request(&plain, ttl, "b")).await.unwrap(),
            AcquireOutcome::Acquired { .. }
        ),
        "another prefix's lock blocked this one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_item_is_a_permanent_error_not_a_panic() {
    let store = common::store(&common::fresh_prefix("corrupt")).await;
    let k = key("corrupt");
    raw_client()
        .put_item()
        .table_name(common::TABLE)
        .item("lock_key", AttributeValue::S(store.item_key(&k)))
        .item("lease_id", AttributeValue::S("someone".into()))
        .item("fence", AttributeValue::S("not a number".into()))
        .send()
        .await
        .unwrap();
    let err = store
        .try_acquire(&request(&k, LONG, "alice"))
        .await
        .unwrap_err();
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
    let err = store.inspect(&k).await.unwrap_err();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skew_allowance_is_added_before_a_takeover() {
    let prefix = common::fresh_prefix("allowance");
    common::ensure_table().await;
    let patient = common::builder(common::TABLE)
        .key_prefix(&prefix)
        .clock_skew_allowance(Duration::from_millis(1500))
        .build()
        .await
        .unwrap();
    let k = key("allowance");
    let short = Duration::from_millis(200);
    acquired(&patient, &request(&k, short, "alice")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Expired by the writer's clock, but not past the allowance.
    let holder = held(&patient, &request(&k, short, "bob")).await;
    assert!(
        holder.expires_in() <= Duration::from_millis(1500),
        "{holder:?}"
    );
    assert_eq!(
        patient
            .inspect(&k)
            .await
            .unwrap()
            .map(|h| h.owner().to_owned()),
        Some("alice".into())
    );
    tokio::time::sleep(holder.expires_in() + Duration::from_millis(50)).await;
    acquired(&patient, &request(&k, short, "bob")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_a_slow_clock_is_taken_over_early_unless_skew_free() {
    // Why the allowance and the skew-free mode exist: Alice's clock is ten
    // seconds behind, so the expiry she writes is already past for everyone.
    common::ensure_table().await;
    let prefix = common::fresh_prefix("skewed");
    let lagging = common::builder(common::TABLE)
        .key_prefix(&prefix)
        .wall_clock(SkewedClock {
            ahead: Duration::ZERO,
            behind: Duration::from_secs(10),
        })
        .build()
        .await
        .unwrap();
    let wall_clock = common::store(&prefix).await;
    let k = key("skewed");
    acquired(&lagging, &request(&k, LONG, "alice")).await;
    // The allowance (20 ms here) does not cover a 10 s skew: taken over.
    acquired(&wall_clock, &request(&k, LONG, "bob")).await;

    // Skew-free clients ignore written expiry times altogether.
    let k = key("skewed-skew-free");
    let skew_free = |clock: SkewedClock| {
        common::builder(common::TABLE)
            .key_prefix(&prefix)
            .takeover(TakeoverMode::SkewFree)
            .wall_clock(clock)
            .build()
    };
    let alice = skew_free(SkewedClock {
        ahead: Duration::ZERO,
        behind: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let bob = skew_free(SkewedClock {
        ahead: Duration::from_secs(10),
        behind: Duration::ZERO,
    })
    .await
    .unwrap();
    let ttl = Duration::from_millis(600);
    let a = request(&k, ttl, "alice");
    let fence = acquired(&alice, &a).await;
    let holder = held(&bob, &request(&k, ttl, "bob")).await;
    assert_eq!(holder.fence(), fence);
    assert!(
        holder.expires_in() > ttl / 2 && holder.expires_in() <= ttl,
        "{holder:?}"
    );
    // Alice renews every third of the TTL for two TTLs: Bob never gets in.
    let mut last_renewal_sent = std::time::Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        last_renewal_sent = std::time::Instant::now();
        assert_eq!(
            alice.renew(&k, a.lease_id, a.ttl).await.unwrap(),
            RenewOutcome::Renewed
        );
        held(&bob, &request(&k, ttl, "bob")).await;
    }
    // Alice stops. Bob takes over only after watching one version for a full
    // TTL on his own monotonic clock: he first saw her last version after
    // she sent its renewal, so not before her own deadline, that renewal's
    // sending + TTL (the guard trusts the lease less long still).
    let b = request(&k, ttl, "bob");
    let bob_fence = loop {
        match bob.try_acquire(&b).await.unwrap() {
            AcquireOutcome::Acquired { fence } => break fence,
            AcquireOutcome::Held(holder) => {
                tokio::time::sleep(holder.expires_in().min(Duration::from_millis(50))).await;
            }
        }
    };
    let taken_after = last_renewal_sent.elapsed();
    assert!(
        taken_after >= ttl,
        "taken over {taken_after:?} after Alice's last renewal was sent, within her TTL {ttl:?}"
    );
    assert!(bob_fence > fence);
    assert_eq!(
        alice.renew(&k, a.lease_id, a.ttl).await.unwrap(),
        RenewOutcome::Lost
    );
    // A released key is free at once, skew-free or not.
    assert_eq!(
        bob.release(&k, b.lease_id).await.unwrap(),
        ReleaseOutcome::Released
    );
    acquired(&alice, &request(&k, ttl, "alice")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_table_with_its_own_key_name_works() {
    let table = fresh_table("yours");
    let store = common::builder(&table)
        .partition_key("YourKey")
        .key_prefix("app-one:")
        .build()
        .await
        .unwrap();
    store.create_table().await.unwrap();
    store.check_table().await.unwrap();
    let other_app = common::builder(&table)
        .partition_key("YourKey")
        .key_prefix("app-two:")
        .build()
        .await
        .unwrap();
    let k = key("shared-name");
    let one = acquired(&store, &request(&k, LONG, "one")).await;
    let two = acquired(&other_app, &request(&k, LONG, "two")).await;
    assert_eq!(
        store.inspect(&k).await.unwrap().map(|h| h.fence()),
        Some(one)
    );
    assert_eq!(
        other_app.inspect(&k).await.unwrap().map(|h| h.fence()),
        Some(two)
    );
}

/// The definition printed for infrastructure as code is the table
/// `create_table` makes: read back from the server after creating it, the
/// table's attributes, key, index, billing and TTL are the rendered ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_definition_renders_the_table_create_table_makes() {
    use serde_json::{Value, json};
    let table = fresh_table("definition");
    let store = common::builder(&table)
        .partition_key("pk")
        .cleanup_attribute("expires")
        .build()
        .await
        .unwrap();
    let rendered = store.table_definition().unwrap().to_cloudformation();
    store.create_table().await.unwrap();

    let described = raw_client()
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let ttl = raw_client()
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    let keys = |keys: &[KeySchemaElement]| -> Vec<Value> {
        keys.iter()
            .map(|k| json!({ "AttributeName": k.attribute_name(), "KeyType": k.key_type().as_str() }))
            .collect()
    };
    let sorted = |mut values: Vec<Value>| {
        values.sort_by_key(|v| v.to_string());
        values
    };
    let index = &described.global_secondary_indexes()[0];
    let from_server = json!({
        "TableName": described.table_name(),
        "BillingMode": described.billing_mode_summary().and_then(|b| b.billing_mode()).map(|b| b.as_str()),
        "AttributeDefinitions": sorted(described.attribute_definitions().iter().map(|a| json!({
            "AttributeName": a.attribute_name(),
            "AttributeType": a.attribute_type().as_str(),
        })).collect()),
        "KeySchema": keys(described.key_schema()),
        "GlobalSecondaryIndexes": [{
            "IndexName": index.index_name(),
            "KeySchema": keys(index.key_schema()),
            "Projection": { "ProjectionType": index.projection().and_then(|p| p.projection_type()).map(|p| p.as_str()) },
        }],
        "TimeToLiveSpecification": {
            "AttributeName": ttl.attribute_name(),
            "Enabled": ttl.time_to_live_status().map(|s| s.as_str()) == Some("ENABLED"),
        },
    });
    let mut properties = rendered["Properties"].clone();
    properties["AttributeDefinitions"] = Value::Array(sorted(
        properties["AttributeDefinitions"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    assert_eq!(rendered["Type"], "AWS::DynamoDB::Table");
    assert_eq!(properties, from_server);
}
