//! DynamoDB backend benchmark: requests per operation, and acquire+release
//! cycles per second next to a raw-SDK baseline of the same two conditional
//! `UpdateItem`s, on one DynamoDB-compatible server in one run.
//!
//! ```text
//! LOCKSTORE_TEST_DYNAMODB_URL=http://127.0.0.1:8000 cargo bench -p lockstore-dynamodb
//! ```
//!
//! Prints a table; it asserts nothing about time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_dynamodb::DynamoDbStore;

const TABLE: &str = "lockstore_bench";
const CYCLES: u32 = 400;
const WARM_UP: u32 = 40;

/// Counts HTTP requests (attempts) sent through the client.
#[derive(Clone, Debug, Default)]
struct Counter(Arc<Mutex<u64>>);

impl Counter {
    fn take(&self) -> u64 {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "Counter"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        *self.0.lock().expect("not poisoned") += 1;
        Ok(())
    }
}

fn client(url: &str, counter: &Counter) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .interceptor(counter.clone())
        .build();
    Client::from_conf(config)
}

fn request(key: &LockKey, owner: &str) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(Duration::from_secs(30)).expect("valid"),
        owner: OwnerLabel::new(owner).expect("valid"),
    }
}

/// One lockstore acquire + release.
async fn lockstore_cycle(store: &DynamoDbStore, key: &LockKey) {
    let r = request(key, "bench");
    match store.try_acquire(&r).await.expect("acquire") {
        AcquireOutcome::Acquired { .. } => {}
        AcquireOutcome::Held(h) => panic!("bench key held by {h:?}"),
    }
    store.release(key, r.lease_id).await.expect("release");
}

/// The baseline: the least a DynamoDB lock can do with the SDK, one
/// conditional UpdateItem to take a key and one to give it back.
async fn raw_cycle(client: &Client, pk: &str) {
    let id = LeaseId::random().to_string();
    client
        .update_item()
        .table_name(TABLE)
        .key("lock_key", AttributeValue::S(pk.to_owned()))
        .condition_expression("attribute_not_exists(lease_id)")
        .update_expression("SET lease_id = :id")
        .expression_attribute_values(":id", AttributeValue::S(id.clone()))
        .send()
        .await
        .expect("raw acquire");
    client
        .update_item()
        .table_name(TABLE)
        .key("lock_key", AttributeValue::S(pk.to_owned()))
        .condition_expression("lease_id = :id")
        .update_expression("REMOVE lease_id")
        .expression_attribute_values(":id", AttributeValue::S(id))
        .send()
        .await
        .expect("raw release");
}

/// The baseline again, but with the expressions and attributes lockstore
/// sends (copied from `src/expressions.rs`): separates what the emulator
/// spends evaluating richer expressions from what the library adds.
async fn raw_cycle_same_expressions(client: &Client, pk: &str) {
    let id = LeaseId::random().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let ms = |d: Duration| AttributeValue::N(d.as_millis().to_string());
    let cleanup = AttributeValue::N((now.as_secs() + 604_800).to_string());
    let names = [
        ("#pk", "lock_key"),
        ("#lease_id", "lease_id"),
        ("#lease_owner", "lease_owner"),
        ("#lease_expires_at_ms", "lease_expires_at_ms"),
        ("#lease_ttl_ms", "lease_ttl_ms"),
        ("#record_version", "record_version"),
        ("#cleanup", "cleanup_at"),
        ("#fence", "fence"),
        ("#released_at_ms", "released_at_ms"),
    ];
    let mut acquire = client
        .update_item()
        .table_name(TABLE)
        .key("lock_key", AttributeValue::S(pk.to_owned()))
        .condition_expression(
            "attribute_not_exists(#pk) OR attribute_not_exists(#lease_id) \
             OR #lease_expires_at_ms <= :takeover_cutoff_ms",
        )
        .update_expression(
            "SET #lease_id = :lease_id, #lease_owner = :owner, \
             #lease_expires_at_ms = :expires_at_ms, #lease_ttl_ms = :ttl_ms, \
             #record_version = :version, #cleanup = :cleanup_at, \
             #fence = if_not_exists(#fence, :fence_base) + :one REMOVE #released_at_ms",
        )
        .expression_attribute_values(":lease_id", AttributeValue::S(id.clone()))
        .expression_attribute_values(":owner", AttributeValue::S("bench".into()))
        .expression_attribute_values(":expires_at_ms", ms(now + Duration::from_secs(30)))
        .expression_attribute_values(":ttl_ms", AttributeValue::N("30000".into()))
        .expression_attribute_values(":version", AttributeValue::S(LeaseId::random().to_string()))
        .expression_attribute_values(":cleanup_at", cleanup.clone())
        .expression_attribute_values(
            ":fence_base",
            AttributeValue::N(now.as_micros().to_string()),
        )
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":takeover_cutoff_ms", ms(now))
        .return_values(ReturnValue::UpdatedNew)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    for (placeholder, name) in names {
        acquire = acquire.expression_attribute_names(placeholder, name);
    }
    acquire.send().await.expect("raw acquire");
    let mut release = client
        .update_item()
        .table_name(TABLE)
        .key("lock_key", AttributeValue::S(pk.to_owned()))
        .condition_expression("#lease_id = :lease_id")
        .update_expression(
            "SET #released_at_ms = :now_ms, #record_version = :version, #cleanup = :cleanup_at \
             REMOVE #lease_id, #lease_owner, #lease_expires_at_ms, #lease_ttl_ms",
        )
        .expression_attribute_values(":lease_id", AttributeValue::S(id))
        .expression_attribute_values(":now_ms", ms(now))
        .expression_attribute_values(":version", AttributeValue::S(LeaseId::random().to_string()))
        .expression_attribute_values(":cleanup_at", cleanup)
        .return_values(ReturnValue::AllOld);
    for (placeholder, name) in names {
        if placeholder != "#pk" && placeholder != "#fence" {
            release = release.expression_attribute_names(placeholder, name);
        }
    }
    release.send().await.expect("raw release");
}

async fn per_second<F, Fut>(mut cycle: F) -> f64
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..WARM_UP {
        cycle(i).await;
    }
    let started = Instant::now();
    for i in 0..CYCLES {
        cycle(i).await;
    }
    f64::from(CYCLES) / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = server_url(Service::DynamoDb);
    let counter = Counter::default();
    let prefix = format!("bench-{:08x}/", rand::random::<u32>());
    let store = DynamoDbStore::builder(TABLE)
        .key_prefix(&prefix)
        .build_with_client(client(&url, &counter))
        .expect("a store");
    store.create_table().await.expect("the bench table");

    // Requests per operation.
    let k = LockKey::new("counted").expect("valid");
    let mut rows: BTreeMap<usize, (&str, u64)> = BTreeMap::new();
    counter.take();
    let alice = request(&k, "alice");
    store.try_acquire(&alice).await.expect("acquire");
    rows.insert(0, ("acquire (granted)", counter.take()));
    store
        .try_acquire(&request(&k, "bob"))
        .await
        .expect("acquire");
    rows.insert(1, ("acquire (refused, holder reported)", counter.take()));
    store
        .renew(&k, alice.lease_id, alice.ttl)
        .await
        .expect("renew");
    rows.insert(2, ("renew", counter.take()));
    store.inspect(&k).await.expect("inspect");
    rows.insert(3, ("inspect", counter.take()));
    store.release(&k, alice.lease_id).await.expect("release");
    rows.insert(4, ("release", counter.take()));
    store.try_acquire(&alice).await.expect("acquire");
    store.try_acquire(&alice).await.expect("acquire");
    counter.take();
    store.try_acquire(&alice).await.expect("acquire");
    rows.insert(
        5,
        (
            "acquire retried by the holder (same lease id)",
            counter.take(),
        ),
    );

    println!("DynamoDB backend on {url} (moto or DynamoDB Local)\n");
    println!("| operation                                      | requests |");
    println!("|------------------------------------------------|----------|");
    for (name, requests) in rows.values() {
        println!("| {name:<46} | {requests:>8} |");
    }

    // Throughput, one client, sequential cycles on rotating keys.
    let keys: Vec<LockKey> = (0..16)
        .map(|i| LockKey::new(format!("cycle-{i}")).expect("valid"))
        .collect();
    let raw = client(&url, &Counter::default());
    let raw_rate = per_second(|i| {
        let pk = format!("{prefix}raw-{}", i % 16);
        let raw = raw.clone();
        async move { raw_cycle(&raw, &pk).await }
    })
    .await;
    counter.take();
    let lock_rate = per_second(|i| lockstore_cycle(&store, &keys[(i % 16) as usize])).await;
    let requests = counter.take() as f64 / f64::from(CYCLES + WARM_UP);
    let same_expressions = per_second(|i| {
        let pk = format!("{prefix}same-{}", i % 16);
        let raw = raw.clone();
        async move { raw_cycle_same_expressions(&raw, &pk).await }
    })
    .await;
    let raw_again = per_second(|i| {
        let pk = format!("{prefix}raw-{}", i % 16);
        let raw = raw.clone();
        async move { raw_cycle(&raw, &pk).await }
    })
    .await;

    println!(
        "\n{CYCLES} acquire+release cycles after {WARM_UP} warm-up, one client, sequential:\n"
    );
    println!("| variant                                        | cycles/s | requests/cycle |");
    println!("|------------------------------------------------|----------|----------------|");
    println!(
        "| raw SDK: conditional UpdateItem x2 (before)    | {raw_rate:>8.1} | {:>14.2} |",
        2.0
    );
    println!(
        "| lockstore-dynamodb try_acquire + release       | {lock_rate:>8.1} | {requests:>14.2} |"
    );
    println!(
        "| raw SDK, lockstore's expressions, x2           | {same_expressions:>8.1} | {:>14.2} |",
        2.0
    );
    println!(
        "| raw SDK: conditional UpdateItem x2 (after)     | {raw_again:>8.1} | {:>14.2} |",
        2.0
    );
    let baseline = (raw_rate + raw_again) / 2.0;
    println!(
        "\nlockstore / minimal raw baseline: {:.0}%; lockstore / raw with the same expressions: {:.0}%",
        100.0 * lock_rate / baseline,
        100.0 * lock_rate / same_expressions
    );
}
