//! The SQS-triggered Lambda handler, invoked as `lambda_runtime` invokes it:
//! SQS event JSON of the shape AWS sends (`tests/fixtures/`) parsed into a
//! `LambdaEvent<SqsEvent>`, against the memory backend and real DynamoDB
//! emulators (moto from `LOCKSTORE_TEST_DYNAMODB_URL`, dynalite from
//! `LOCKSTORE_TEST_DYNALITE_URL`). Each case checks the batch response and
//! the ledger's records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore::LockError;
use lockstore::dynamodb::DynamoDbStore;
use lockstore::lambda::{Context, LambdaEvent, SqsEvent, SqsHandler, SqsMessage};
use lockstore::ledger::{
    IdempotentConsumer, Ledger, LedgerStore, Processed, RunFailure, RunStatus,
};
use lockstore::memory::MemoryStore;
use lockstore_conformance::provision::{Service, server_url};

const BATCH: &str = include_str!("fixtures/sqs_batch.json");
const BODY_KEYS: &str = include_str!("fixtures/sqs_body_keys.json");

/// The ids in `BATCH`: order A (delivered twice in the batch), order B
/// (fails once), a poison order (always fails).
const A: &str = "0f6d3b4e-9c1a-4b7e-8a52-3d1f0c9e2a11";
const B: &str = "5a2c8e71-3b4d-4f60-9e18-7c6a2b0d4f22";
const POISON: &str = "c3e9a0f4-6d27-48b1-b5c3-1e8f7a2d6b33";

/// The records of `fixture` at `picked`, as one invocation with a Lambda
/// deadline `left` from now.
fn invocation(fixture: &str, picked: &[usize], left: Duration) -> LambdaEvent<SqsEvent> {
    let mut event: SqsEvent = serde_json::from_str(fixture).expect("the fixture is an SQS event");
    let records = std::mem::take(&mut event.records);
    event.records = picked.iter().map(|&at| records[at].clone()).collect();
    let mut context = Context::default();
    context.request_id = "c0ffee00-0000-4000-8000-000000000001".into();
    let deadline = SystemTime::now() + left;
    context.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    LambdaEvent::new(event, context)
}

const FIFTEEN_MINUTES: Duration = Duration::from_secs(900);

/// The payment provider behind the function: counts calls and charges per
/// order. Order B times out on its first call; the poison order always fails.
#[derive(Default)]
struct Shop {
    calls: Mutex<HashMap<String, u32>>,
    charges: Mutex<HashMap<String, u32>>,
}

impl Shop {
    fn charge(&self, message: &SqsMessage) -> Result<String, RunFailure> {
        let body: serde_json::Value = serde_json::from_str(message.body.as_deref().unwrap_or(""))
            .map_err(RunFailure::fatal)?;
        let order = body["order_id"].as_str().unwrap_or("?").to_owned();
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            let calls = calls.entry(order.clone()).or_default();
            *calls += 1;
            *calls
        };
        if order.starts_with("POISON") {
            return Err(RunFailure::retryable(
                "the card processor refuses this order",
            ));
        }
        if order == "B-200" && calls == 1 {
            return Err(RunFailure::retryable("the provider timed out"));
        }
        *self
            .charges
            .lock()
            .unwrap()
            .entry(order.clone())
            .or_default() += 1;
        Ok(format!("receipt {order}"))
    }

    fn calls(&self, order: &str) -> u32 {
        self.calls.lock().unwrap().get(order).copied().unwrap_or(0)
    }

    fn charges(&self, order: &str) -> u32 {
        self.charges
            .lock()
            .unwrap()
            .get(order)
            .copied()
            .unwrap_or(0)
    }
}

async fn invoke(
    handler: &SqsHandler,
    shop: &Arc<Shop>,
    event: LambdaEvent<SqsEvent>,
) -> Result<Vec<String>, LockError> {
    let response = handler
        .handle(event, |message, _lease| {
            let shop = Arc::clone(shop);
            async move { shop.charge(&message) }
        })
        .await?;
    Ok(response
        .batch_item_failures
        .into_iter()
        .map(|failure| failure.item_identifier)
        .collect())
}

/// One batch with a duplicate, a failing and a poison message, then the
/// redeliveries SQS makes: every order is charged at most once, the failing
/// one on its second delivery, the poison one is tried `max_attempts` times
/// and then ignored, and a succeeded message is never run again.
async fn redelivered_batches_charge_each_order_once(ledger: Ledger) {
    let consumer = IdempotentConsumer::new(ledger.clone(), Duration::from_secs(10))
        .unwrap()
        .max_attempts(2)
        .unwrap();
    let handler = SqsHandler::new(consumer);
    let shop = Arc::new(Shop::default());

    // The batch as delivered: A, B, POISON, and A again.
    let failures = invoke(
        &handler,
        &shop,
        invocation(BATCH, &[0, 1, 2, 3], FIFTEEN_MINUTES),
    )
    .await
    .unwrap();
    assert_eq!(failures, [B, POISON], "only the failed messages come back");
    assert_eq!(
        shop.charges("A-100"),
        1,
        "the duplicate in the batch ran again"
    );
    assert_eq!(shop.calls("A-100"), 1);
    let a = ledger.get(format!("msg/{A}")).await.unwrap().unwrap();
    assert_eq!((a.status, a.attempts), (RunStatus::Succeeded, 1));
    assert_eq!(a.result_json::<String>().unwrap(), "receipt A-100");
    let b = ledger.get(format!("msg/{B}")).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (RunStatus::Failed, 1));

    // SQS delivers the failures again, and A once more (a redelivery of a
    // message whose work succeeded).
    let failures = invoke(
        &handler,
        &shop,
        invocation(BATCH, &[0, 1, 2], FIFTEEN_MINUTES),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(shop.calls("A-100"), 1, "a succeeded message ran again");
    assert_eq!(shop.charges("B-200"), 1);
    assert_eq!(shop.calls("POISON-300"), 2);
    let b = ledger.get(format!("msg/{B}")).await.unwrap().unwrap();
    assert_eq!((b.status, b.attempts), (RunStatus::Succeeded, 2));
    let poison = ledger.get(format!("msg/{POISON}")).await.unwrap().unwrap();
    assert_eq!((poison.status, poison.attempts), (RunStatus::Ignored, 2));

    // The poison message once more (a producer's retry): ignored, not run.
    let failures = invoke(&handler, &shop, invocation(BATCH, &[2], FIFTEEN_MINUTES))
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(shop.calls("POISON-300"), 2, "an ignored message ran again");
}

/// Keys from a body field: two messages of one order run once; the same
/// order id with another body is rejected, as is a body without the field;
/// neither comes back.
async fn body_keys_recognise_copies_with_new_message_ids(ledger: Ledger) {
    let consumer = IdempotentConsumer::new(ledger.clone(), Duration::from_secs(10)).unwrap();
    let handler = SqsHandler::new(consumer)
        .key_from_body("/order_id", "order/")
        .unwrap();
    let shop = Arc::new(Shop::default());
    let event = invocation(BODY_KEYS, &[0, 1, 2, 3], FIFTEEN_MINUTES);
    let report = handler
        .process(event, |message, _lease| {
            let shop = Arc::clone(&shop);
            async move { shop.charge(&message) }
        })
        .await
        .unwrap();
    let outcomes: Vec<&str> = report
        .items
        .iter()
        .map(|(_, processed)| match processed {
            Processed::Ran(_) => "ran",
            Processed::Replayed(_) => "replayed",
            Processed::Rejected(LockError::RequestMismatch { .. }) => "mismatch",
            Processed::Rejected(LockError::InvalidArgument { .. }) => "no key",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(outcomes, ["ran", "replayed", "mismatch", "no key"]);
    assert!(report.batch_item_failures().is_empty());
    assert_eq!(shop.charges("C-400"), 1);
    let record = ledger.get("order/C-400").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
}

fn memory_ledger() -> Ledger {
    Ledger::from_arc(Arc::new(MemoryStore::new()) as Arc<dyn LedgerStore>)
}

#[tokio::test]
async fn memory_redelivered_batches_charge_each_order_once() {
    redelivered_batches_charge_each_order_once(memory_ledger()).await;
}

#[tokio::test]
async fn memory_body_keys_recognise_copies_with_new_message_ids() {
    body_keys_recognise_copies_with_new_message_ids(memory_ledger()).await;
}

/// A record without a message id cannot be reported back: the event is
/// refused whole, before anything runs.
#[tokio::test]
async fn an_event_without_message_ids_fails_the_invocation() {
    let handler =
        SqsHandler::new(IdempotentConsumer::new(memory_ledger(), Duration::from_secs(10)).unwrap());
    let shop = Arc::new(Shop::default());
    let mut event = invocation(BATCH, &[0, 1], FIFTEEN_MINUTES);
    event.payload.records[1].message_id = None;
    let outcome = invoke(&handler, &shop, event).await;
    assert!(
        matches!(
            outcome,
            Err(LockError::InvalidArgument {
                name: "SQS event",
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(shop.calls("A-100"), 0, "a message ran from a refused event");
}

/// The invocation's deadline bounds the run's lease: work still running
/// near it is stopped and its message comes back, the message after it is
/// not started, and a later invocation takes the run over at once instead
/// of finding it held (the memory store and the handler share tokio's
/// paused clock, so this is exact).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn runs_end_by_the_invocation_deadline() {
    let ledger = memory_ledger();
    let consumer = IdempotentConsumer::new(ledger.clone(), Duration::from_secs(10)).unwrap();
    let handler = SqsHandler::new(consumer).deadline_reserve(Duration::from_secs(5));
    let started = Arc::new(Mutex::new(Vec::new()));
    let slow = |message: SqsMessage, _lease: lockstore::LeaseHandle| {
        let started = Arc::clone(&started);
        async move {
            started
                .lock()
                .unwrap()
                .push(message.message_id.clone().unwrap());
            // Longer than the invocation may run.
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok::<_, RunFailure>("done".to_owned())
        }
    };
    let report = handler
        .process(invocation(BATCH, &[0, 1], Duration::from_secs(25)), slow)
        .await
        .unwrap();
    assert_eq!(report.batch_item_failures(), [A, B]);
    assert!(
        matches!(
            report.items[0].1,
            Processed::Error(LockError::LeaseLost { .. })
        ),
        "{:?}",
        report.items[0].1
    );
    assert_eq!(*started.lock().unwrap(), [A], "B started past the reserve");
    // Its run's lease was renewed only up to the deadline: a later
    // invocation just after it takes the run over, as attempt 2 (renewed
    // for its full TTL, the lease would still be live).
    let record = ledger.get(format!("msg/{A}")).await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = handler
        .process(invocation(BATCH, &[0], FIFTEEN_MINUTES), |_, _| async {
            Ok::<_, RunFailure>("done".to_owned())
        })
        .await
        .unwrap();
    assert!(
        matches!(report.items[0].1, Processed::Ran(_)),
        "{:?}",
        report.items[0].1
    );
    let record = ledger.get(format!("msg/{A}")).await.unwrap().unwrap();
    assert_eq!((record.status, record.attempts), (RunStatus::Succeeded, 2));
}

/// Where a DynamoDB store's tests keep their records.
const TABLE: &str = "lockstore_lambda_test";

async fn dynamodb_store(url: &str, table: &str, prefix: &str) -> Result<DynamoDbStore, LockError> {
    DynamoDbStore::builder(table)
        .endpoint_url(url)
        .region("us-east-1")
        .static_credentials("test", "test")
        .clock_skew_allowance(Duration::from_millis(20))
        .key_prefix(format!("{prefix}-{:016x}/", rand_suffix()))
        .build()
        .await
}

fn rand_suffix() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

async fn dynamodb_ledger(url: &str, table: &str, prefix: &str) -> Ledger {
    let store = dynamodb_store(url, table, prefix).await.expect("a store");
    store.create_table().await.expect("the test table");
    Ledger::from_arc(Arc::new(store) as Arc<dyn LedgerStore>)
}

fn moto() -> String {
    server_url(Service::DynamoDb)
}

fn dynalite() -> String {
    match std::env::var("LOCKSTORE_TEST_DYNALITE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "no dynalite server: set LOCKSTORE_TEST_DYNALITE_URL (`eval \"$(scripts/servers.sh start)\"` starts one)"
        ),
    }
}

#[tokio::test]
async fn moto_redelivered_batches_charge_each_order_once() {
    let ledger = dynamodb_ledger(&moto(), TABLE, "redelivered").await;
    redelivered_batches_charge_each_order_once(ledger).await;
}

#[tokio::test]
async fn moto_body_keys_recognise_copies_with_new_message_ids() {
    let ledger = dynamodb_ledger(&moto(), TABLE, "body-keys").await;
    body_keys_recognise_copies_with_new_message_ids(ledger).await;
}

#[tokio::test]
async fn dynalite_redelivered_batches_charge_each_order_once() {
    let table = format!("{TABLE}_dynalite");
    let ledger = dynamodb_ledger(&dynalite(), &table, "redelivered").await;
    redelivered_batches_charge_each_order_once(ledger).await;
}

/// A table that does not exist is the deployment's fault, not a message's:
/// the invocation fails (Lambda retries the whole batch) with what to fix,
/// and nothing ran.
#[tokio::test]
async fn moto_missing_table_fails_the_invocation() {
    let store = dynamodb_store(&moto(), "lockstore_lambda_no_such_table", "missing")
        .await
        .expect("building a store sends nothing");
    let ledger = Ledger::from_arc(Arc::new(store) as Arc<dyn LedgerStore>);
    let handler =
        SqsHandler::new(IdempotentConsumer::new(ledger, Duration::from_secs(10)).unwrap());
    let shop = Arc::new(Shop::default());
    let outcome = invoke(&handler, &shop, invocation(BATCH, &[0, 1], FIFTEEN_MINUTES)).await;
    match outcome {
        Err(LockError::Config { message, .. }) => {
            assert!(
                message.contains("lockstore_lambda_no_such_table"),
                "{message}"
            );
        }
        other => panic!("expected a configuration error for the batch, got {other:?}"),
    }
    assert_eq!(shop.calls("A-100"), 0);
}
