//! The DynamoDB backend next to the raw SDK, variants interleaved over
//! rounds (see `lockstore_conformance::bench`):
//!
//! * client overhead: lockstore's acquire + release and the raw SDK sending
//!   the same two requests, both over an in-process HTTP client that answers
//!   canned replies, so no emulator's time is in the way;
//! * on moto and on dynalite: requests per operation, the held item's size
//!   and the write units the server reports, and cycles/s next to a minimal
//!   conditional-`UpdateItem` pair and next to the raw SDK sending
//!   lockstore's requests.
//!
//! ```text
//! scripts/servers.sh run cargo bench -p lockstore-dynamodb --bench dynamodb_bench
//! ```
//!
//! `BENCH_ROUNDS` and `BENCH_SECTIONS` (overhead, servers) as in the Redis
//! bench. Prints tables; it asserts nothing about time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_conformance::bench::{self, Plan, Table, Variant, at_most, us};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_dynamodb::DynamoDbStore;

const TABLE: &str = "lockstore_bench";

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
    client_with(url, counter, None)
}

fn client_with(url: &str, counter: &Counter, http: Option<Canned>) -> Client {
    let mut config = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .interceptor(counter.clone());
    if let Some(http) = http {
        config = config.http_client(http);
    }
    Client::from_conf(config.build())
}

/// An HTTP client that answers every request in-process with one canned
/// `UpdateItem` reply, so a cycle measures the client alone: lockstore's
/// code plus the SDK (serialization, signing, the orchestrator, parsing),
/// without a server or a socket.
#[derive(Clone, Debug)]
struct Canned;

/// Good for both requests of a cycle: the acquire reads `fence`, the
/// release reads `lease_expires_at_ms` (far in the future: released).
const CANNED_REPLY: &str = r#"{"Attributes":{"fence":{"N":"1700000000000001"},"lease_expires_at_ms":{"N":"99999999999999"}}}"#;

impl HttpConnector for Canned {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let status = 200u16.try_into().expect("a status");
        let mut response = HttpResponse::new(status, SdkBody::from(CANNED_REPLY));
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        HttpConnectorFuture::ready(Ok(response))
    }
}

impl HttpClient for Canned {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
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
async fn lockstore_cycle(store: DynamoDbStore, key: LockKey) {
    let key = &key;
    let r = request(key, "bench");
    match store.try_acquire(&r).await.expect("acquire") {
        AcquireOutcome::Acquired { .. } => {}
        AcquireOutcome::Held(h) => panic!("bench key held by {h:?}"),
    }
    store.release(key, r.lease_id).await.expect("release");
}

/// The baseline: the least a DynamoDB lock can do with the SDK, one
/// conditional UpdateItem to take a key and one to give it back.
async fn raw_cycle(client: Client, pk: String) {
    let pk = pk.as_str();
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
async fn raw_cycle_same_expressions(client: Client, pk: String) {
    raw_same(&client, &pk, false).await;
}

/// The raw cycle with lockstore's requests; with `capacity`, each asks for
/// `ReturnConsumedCapacity=TOTAL` and the write units are returned.
async fn raw_same(client: &Client, pk: &str, capacity: bool) -> (Option<f64>, Option<f64>) {
    let total = capacity.then_some(ReturnConsumedCapacity::Total);
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
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .set_return_consumed_capacity(total.clone());
    for (placeholder, name) in names {
        acquire = acquire.expression_attribute_names(placeholder, name);
    }
    let acquired = acquire.send().await.expect("raw acquire");
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
        .return_values(ReturnValue::AllOld)
        .set_return_consumed_capacity(total);
    for (placeholder, name) in names {
        if placeholder != "#pk" && placeholder != "#fence" {
            release = release.expression_attribute_names(placeholder, name);
        }
    }
    let released = release.send().await.expect("raw release");
    let units =
        |c: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>| c.and_then(|c| c.capacity_units());
    (
        units(acquired.consumed_capacity()),
        units(released.consumed_capacity()),
    )
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds = rounds();
    println!(
        "lockstore-dynamodb bench: {rounds} rounds (BENCH_ROUNDS), sections: {}",
        bench::sections()
    );
    if bench::section("overhead") {
        client_overhead(rounds).await;
    }
    if bench::section("servers") {
        let mut servers = vec![("moto", server_url(Service::DynamoDb))];
        match std::env::var("LOCKSTORE_TEST_DYNALITE_URL") {
            Ok(url) if !url.trim().is_empty() => servers.push(("dynalite", url)),
            _ => println!(
                "\ndynalite: LOCKSTORE_TEST_DYNALITE_URL is not set, so it is not measured (scripts/servers.sh starts one)"
            ),
        }
        for (name, url) in servers {
            on_server(name, &url, rounds).await;
        }
    }
}

/// lockstore's cycle and the raw SDK sending the same two requests, both
/// answered in-process by [`Canned`]: what lockstore adds to the SDK.
async fn client_overhead(rounds: usize) {
    let canned = client_with("http://canned.invalid", &Counter::default(), Some(Canned));
    let store = DynamoDbStore::builder(TABLE)
        .key_prefix("bench/")
        .build_with_client(canned.clone())
        .expect("a store");
    let key = LockKey::new("overhead").expect("valid");
    let plan = Plan {
        rounds,
        per_round: 1000,
        warm_up: 100,
    };
    let variants = vec![
        Variant::timed("raw SDK, lockstore's two requests", {
            let canned = canned.clone();
            move |_| raw_cycle_same_expressions(canned.clone(), "bench/\0overhead".to_owned())
        }),
        Variant::timed("lockstore try_acquire + release", {
            let store = store.clone();
            move |_| lockstore_cycle(store.clone(), key.clone())
        }),
    ];
    let figures = bench::sequential(&variants, plan).await;
    let mut table = Table::new(
        format!(
            "DynamoDB client overhead: the SDK over an in-process HTTP client with canned replies, no server ({} rounds × {} cycles, interleaved)",
            plan.rounds, plan.per_round
        ),
        &[
            "variant",
            "p50 per cycle",
            "p99",
            "cycles/s",
            "overhead vs raw SDK",
            "goal ≤ 5%",
        ],
    );
    for f in &figures {
        let overhead = f.p50_in(&figures[0]) - 1.0;
        table.row(vec![
            f.name.clone(),
            us(f.p50()),
            us(f.p99()),
            format!("{:.0}", f.per_second()),
            format!("{:+.1}%", 100.0 * overhead),
            if f.name.starts_with("lockstore") {
                at_most(1.0 + overhead, 1.05)
            } else {
                String::new()
            },
        ]);
    }
    table.print();
}

/// DynamoDB's item size: name bytes plus value bytes, a number being about
/// one byte per two significant digits plus one.
fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(text) => text.len(),
                    AttributeValue::N(number) => {
                        let digits = number
                            .trim_matches('0')
                            .chars()
                            .filter(char::is_ascii_digit)
                            .count();
                        digits.div_ceil(2) + 1
                    }
                    other => format!("{other:?}").len(),
                }
        })
        .sum()
}

async fn on_server(name: &str, url: &str, rounds: usize) {
    let counter = Counter::default();
    let prefix = format!("bench-{:08x}/", rand::random::<u32>());
    let store = DynamoDbStore::builder(TABLE)
        .key_prefix(&prefix)
        .build_with_client(client(url, &counter))
        .expect("a store");
    store.create_table().await.expect("the bench table");

    // Requests per operation.
    let k = LockKey::new("counted").expect("valid");
    let mut rows: Vec<(&str, u64)> = Vec::new();
    counter.take();
    let alice = request(&k, "alice");
    store.try_acquire(&alice).await.expect("acquire");
    rows.push(("acquire (granted)", counter.take()));
    store
        .try_acquire(&request(&k, "bob"))
        .await
        .expect("acquire");
    rows.push(("acquire (refused, holder reported)", counter.take()));
    store
        .renew(&k, alice.lease_id, alice.ttl)
        .await
        .expect("renew");
    rows.push(("renew", counter.take()));
    store.inspect(&k).await.expect("inspect");
    rows.push(("inspect", counter.take()));
    let held_item = store
        .client()
        .get_item()
        .table_name(TABLE)
        .key("lock_key", AttributeValue::S(store.item_key(&k)))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("the item");
    counter.take();
    store.release(&k, alice.lease_id).await.expect("release");
    rows.push(("release", counter.take()));
    store.try_acquire(&alice).await.expect("acquire");
    store.try_acquire(&alice).await.expect("acquire");
    counter.take();
    store.try_acquire(&alice).await.expect("acquire");
    rows.push((
        "acquire retried by the holder (same lease id)",
        counter.take(),
    ));
    let mut table = Table::new(
        format!("DynamoDB on {name} ({url}): requests per operation"),
        &["operation", "requests"],
    );
    for (operation, requests) in rows {
        table.row(vec![operation.into(), requests.to_string()]);
    }
    table.print();

    let raw = client(url, &Counter::default());
    let (acquire_units, release_units) = raw_same(&raw, &format!("{prefix}capacity"), true).await;
    let show = |u: Option<f64>| u.map_or("not reported".to_owned(), |u| format!("{u}"));
    let mut table = Table::new(
        format!("DynamoDB on {name}: item size and write units"),
        &["measure", "value"],
    );
    table.row(vec![
        "held lock item (one write unit is ≤ 1 KB)".into(),
        format!(
            "{} bytes, {} attributes",
            item_size(&held_item),
            held_item.len()
        ),
    ]);
    table.row(vec![
        "ConsumedCapacity of the acquire (TOTAL)".into(),
        show(acquire_units),
    ]);
    table.row(vec![
        "ConsumedCapacity of the release (TOTAL)".into(),
        show(release_units),
    ]);
    table.print();

    // Throughput, one client, sequential cycles on rotating keys.
    let keys: Arc<Vec<LockKey>> = Arc::new(
        (0..16)
            .map(|i| LockKey::new(format!("cycle-{i}")).expect("valid"))
            .collect(),
    );
    let plan = Plan {
        rounds,
        per_round: 40,
        warm_up: 4,
    };
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = move || turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
    let variants = vec![
        Variant::timed("raw SDK: minimal conditional UpdateItem x2", {
            let (raw, prefix, next) = (raw.clone(), prefix.clone(), next.clone());
            move |_| raw_cycle(raw.clone(), format!("{prefix}raw-{}", next()))
        }),
        Variant::timed("lockstore try_acquire + release", {
            let (store, next) = (store.clone(), next.clone());
            move |_| lockstore_cycle(store.clone(), keys[next()].clone())
        }),
        Variant::timed("raw SDK: lockstore's two requests", {
            let (raw, prefix) = (raw.clone(), prefix.clone());
            move |_| raw_cycle_same_expressions(raw.clone(), format!("{prefix}same-{}", next()))
        }),
    ];
    let figures = bench::sequential(&variants, plan).await;
    let mut table = Table::new(
        format!(
            "DynamoDB on {name}: acquire+release, one client ({} rounds × {} cycles, interleaved)",
            plan.rounds, plan.per_round
        ),
        &[
            "variant",
            "p50",
            "cycles/s",
            "vs minimal pair",
            "vs same requests",
        ],
    );
    for f in &figures {
        table.row(vec![
            f.name.clone(),
            us(f.p50()),
            format!("{:.0}", f.per_second()),
            format!("{:.2}×", f.rate_over(&figures[0])),
            format!("{:.2}×", f.rate_over(&figures[2])),
        ]);
    }
    table.print();
}
