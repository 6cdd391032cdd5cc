//! DynamoDB-specific ledger tests: requests per transition (counted by an
//! SDK interceptor), the item layout (records apart from lock items, TTL
//! only on finished records), the index check, and a throughput table of
//! begin+succeed next to the lock's acquire+release.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use common::counting::RequestCounter;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RetryOutcome, RunError, RunStatus,
};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, ReleaseOutcome,
    RenewOutcome, Ttl,
};
use lockstore_dynamodb::{DynamoDbStore, TableProblem};
use tokio::sync::OnceCell;

const TABLE: &str = "lockstore_ledger_test";
const LONG: Duration = Duration::from_secs(30);

async fn ensure_table() {
    static CREATED: OnceCell<()> = OnceCell::const_new();
    CREATED
        .get_or_init(|| async {
            let store = common::builder(TABLE).build().await.expect("a store");
            store.create_table().await.expect("the ledger test table");
        })
        .await;
}

/// A store on the ledger table whose requests are counted.
async fn counted_store(name: &str) -> (DynamoDbStore, RequestCounter) {
    ensure_table().await;
    let counter = RequestCounter::default();
    let client = Client::from_conf(
        common::sdk_config_builder()
            .interceptor(counter.clone())
            .build(),
    );
    let store = common::builder(TABLE)
        .key_prefix(format!("{}/", common::fresh_prefix(name)))
        .build_with_client(client)
        .unwrap();
    (store, counter)
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

fn begin(key: &LockKey, owner: &str, max: u32) -> BeginRequest {
    BeginRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
        max_attempts: max,
        request_hash: None,
    }
}

fn finish(request: &BeginRequest, finish: Finish) -> FinishRequest {
    FinishRequest {
        key: request.key.clone(),
        lease_id: request.lease_id,
        finish,
    }
}

fn one(operation: &str) -> std::collections::BTreeMap<String, u64> {
    [(operation.to_owned(), 1)].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_per_ledger_transition() {
    let (store, counter) = counted_store("ledger-count").await;
    let k = key("counted");
    counter.take();

    let first = begin(&k, "alice", 2);
    let started = store.begin(&first).await.unwrap();
    assert!(matches!(started, BeginOutcome::Started { attempt: 1, .. }));
    assert_eq!(counter.take(), one("UpdateItem"), "begin");

    // Refused: the live run comes back in the refusal itself on moto and
    // DynamoDB; a server without it costs one counted GetItem.
    let refused = store.begin(&begin(&k, "bob", 2)).await.unwrap();
    let BeginOutcome::Existing(record) = refused else {
        panic!("a live run was started again: {refused:?}")
    };
    assert_eq!(record.owner.as_deref(), Some("alice"));
    let reads = store.ledger_reads();
    let mut expected = one("UpdateItem");
    if reads > 0 {
        expected.insert("GetItem".to_owned(), reads);
    }
    assert_eq!(counter.take(), expected, "refused begin");
    // Whether this server returns the old item with a refusal, as the lock
    // sees it: then the ledger must not have read it separately.
    let lock = |owner: &str| AcquireRequest {
        key: key("probe"),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
    };
    store.try_acquire(&lock("a")).await.unwrap();
    store.try_acquire(&lock("b")).await.unwrap();
    if store.holder_reads() == 0 {
        assert_eq!(
            reads, 0,
            "the server returned the record, yet it was read again"
        );
    }
    counter.take();

    assert_eq!(
        store
            .renew_run(&k, first.lease_id, first.ttl)
            .await
            .unwrap(),
        RenewOutcome::Renewed
    );
    assert_eq!(counter.take(), one("UpdateItem"), "renew_run");

    // A retryable failure with attempts left: one write.
    let outcome = store
        .finish(&finish(
            &first,
            Finish::Failed {
                error: RunError::new(1, "boom", true),
            },
        ))
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Finished(RunStatus::Failed));
    assert_eq!(counter.take(), one("UpdateItem"), "fail");

    let second = begin(&k, "carol", 2);
    assert!(matches!(
        store.begin(&second).await.unwrap(),
        BeginOutcome::Started { attempt: 2, .. }
    ));
    counter.take();
    // The retried begin (same lease id) finds its own run and refreshes it.
    assert!(matches!(
        store.begin(&second).await.unwrap(),
        BeginOutcome::Started { attempt: 2, .. }
    ));
    let retried = counter.take();
    assert_eq!(
        retried.get("UpdateItem"),
        Some(&2),
        "retried begin: {retried:?}"
    );

    let outcome = store
        .finish(&finish(
            &second,
            Finish::Succeeded {
                result: Some(b"42".to_vec()),
            },
        ))
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Finished(RunStatus::Succeeded));
    assert_eq!(counter.take(), one("UpdateItem"), "succeed");

    let record = store.get(&k).await.unwrap().unwrap();
    assert_eq!(record.result.as_deref(), Some(&b"42"[..]));
    assert_eq!(counter.take(), one("GetItem"), "get");

    assert_eq!(
        store.enqueue(&key("queued"), None).await.unwrap(),
        EnqueueOutcome::Created
    );
    assert_eq!(counter.take(), one("UpdateItem"), "enqueue");
    assert_eq!(
        store.enqueue(&k, None).await.unwrap(),
        EnqueueOutcome::Exists(RunStatus::Succeeded)
    );
    let refused_enqueue = counter.take();
    assert_eq!(
        refused_enqueue.get("UpdateItem"),
        Some(&1),
        "{refused_enqueue:?}"
    );

    // A fatal failure: ignored in one write; retry requeues it in one.
    let third = begin(&key("fatal"), "dave", 3);
    store.begin(&third).await.unwrap();
    store
        .finish(&finish(
            &third,
            Finish::Failed {
                error: RunError::new(1, "bad input", false),
            },
        ))
        .await
        .unwrap();
    counter.take();
    assert_eq!(
        store.retry(&key("fatal")).await.unwrap(),
        RetryOutcome::Requeued
    );
    assert_eq!(counter.take(), one("UpdateItem"), "retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_items_apart_from_locks_and_only_finished_ones_expire() {
    let (store, _) = counted_store("ledger-layout").await;
    let k = key("shared");
    let lock = AcquireRequest {
        key: k.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: OwnerLabel::new("locker").unwrap(),
    };
    assert!(matches!(
        store.try_acquire(&lock).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    let run = begin(&k, "runner", 1);
    store.begin(&run).await.unwrap();
    let raw = |pk: String| {
        let store = store.clone();
        async move {
            store
                .client()
                .get_item()
                .table_name(TABLE)
                .key(store.partition_key(), AttributeValue::S(pk))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    let lock_item = raw(store.item_key(&k)).await;
    assert!(
        !lock_item.keys().any(|a| a.starts_with("exec_")),
        "the lock item carries run attributes: {lock_item:?}"
    );
    let run_pk = format!("{}\0run", store.item_key(&k));
    let running = raw(run_pk.clone()).await;
    assert!(
        !running.contains_key(store.cleanup_attribute()),
        "a running record may be deleted by DynamoDB TTL: {running:?}"
    );
    store
        .finish(&finish(&run, Finish::Succeeded { result: None }))
        .await
        .unwrap();
    let finished = raw(run_pk).await;
    assert!(
        finished.contains_key(store.cleanup_attribute()),
        "a finished record never expires: {finished:?}"
    );
    // An ignored record expires too, until an operator requeues it.
    let other = key("requeued");
    let fatal = begin(&other, "runner", 3);
    store.begin(&fatal).await.unwrap();
    let error = RunError::new(1, "fatal", false);
    store
        .finish(&finish(&fatal, Finish::Failed { error }))
        .await
        .unwrap();
    let other_pk = format!("{}\0run", store.item_key(&other));
    assert!(
        raw(other_pk.clone())
            .await
            .contains_key(store.cleanup_attribute())
    );
    assert_eq!(store.retry(&other).await.unwrap(), RetryOutcome::Requeued);
    let pending = raw(other_pk).await;
    assert!(
        !pending.contains_key(store.cleanup_attribute()),
        "a requeued record may be deleted by DynamoDB TTL: {pending:?}"
    );
    assert_eq!(
        store.release(&k, lock.lease_id).await.unwrap(),
        ReleaseOutcome::Released,
        "the run ended the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_table_names_a_missing_ledger_index_and_create_table_adds_it() {
    // The lock suite's table was made by create_table, so it has the index;
    // a table made elsewhere (here: only the key) does not.
    let table = format!("ledger_idx_{:08x}", rand::random::<u32>());
    let bare = common::builder(&table).build().await.unwrap();
    bare.client()
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("lock_key")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("lock_key")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let problems = bare.table_problems().await.unwrap();
    let index = problems
        .iter()
        .find(|p| matches!(p, TableProblem::LedgerIndex { .. }))
        .unwrap_or_else(|| panic!("no index problem in {problems:?}"));
    let words = index.to_string();
    assert!(
        words.contains("exec_status-index") && words.contains("create_table"),
        "{words}"
    );
    bare.create_table().await.unwrap();
    bare.check_table().await.unwrap();
    // And the index serves queries.
    let k = key("indexed");
    bare.enqueue(&k, None).await.unwrap();
    let page = bare
        .query(&lockstore_api::ledger::RunQuery::new(
            lockstore_api::ledger::StatusFilter::Unfinished,
        ))
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    bare.client()
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

/// Not a promise, a measurement: begin+succeed cycles next to the lock's
/// acquire+release, interleaved so both see the same server load. Prints a
/// table; asserts only that every cycle worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_begin_succeed_next_to_acquire_release() {
    let (store, counter) = counted_store("ledger-bench").await;
    let rounds = 5;
    let per_round = 40;
    let (mut ledger_time, mut lock_time) = (Duration::ZERO, Duration::ZERO);
    let (mut ledger_requests, mut lock_requests) = (0, 0);
    for round in 0..rounds {
        counter.take();
        let started = Instant::now();
        for i in 0..per_round {
            let run = begin(&key(&format!("run-{round}-{i}")), "bench", 1);
            assert!(matches!(
                store.begin(&run).await.unwrap(),
                BeginOutcome::Started { .. }
            ));
            let done = store
                .finish(&finish(
                    &run,
                    Finish::Succeeded {
                        result: Some(b"ok".to_vec()),
                    },
                ))
                .await
                .unwrap();
            assert_eq!(done, FinishOutcome::Finished(RunStatus::Succeeded));
        }
        ledger_time += started.elapsed();
        ledger_requests += counter.take_total();
        let started = Instant::now();
        for i in 0..per_round {
            let lock = AcquireRequest {
                key: key(&format!("lock-{i}")),
                lease_id: LeaseId::random(),
                ttl: Ttl::new(LONG).unwrap(),
                owner: OwnerLabel::new("bench").unwrap(),
            };
            assert!(matches!(
                store.try_acquire(&lock).await.unwrap(),
                AcquireOutcome::Acquired { .. }
            ));
            assert_eq!(
                store.release(&lock.key, lock.lease_id).await.unwrap(),
                ReleaseOutcome::Released
            );
        }
        lock_time += started.elapsed();
        lock_requests += counter.take_total();
    }
    let cycles = f64::from(rounds * per_round);
    println!("| cycle (moto, sequential)  | cycles/s | requests/cycle |");
    println!("|---------------------------|----------|----------------|");
    println!(
        "| ledger begin + succeed    | {:8.1} | {:14.2} |",
        cycles / ledger_time.as_secs_f64(),
        ledger_requests as f64 / cycles
    );
    println!(
        "| lock acquire + release    | {:8.1} | {:14.2} |",
        cycles / lock_time.as_secs_f64(),
        lock_requests as f64 / cycles
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_a_typed_error_before_any_request() {
    let (store, counter) = counted_store("ledger-size").await;
    let run = begin(&key("big"), "w", 1);
    store.begin(&run).await.unwrap();
    counter.take();
    let result = vec![b'x'; lockstore_api::ledger::MAX_RESULT_BYTES + 1];
    let err = store
        .finish(&finish(
            &run,
            Finish::Succeeded {
                result: Some(result),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            lockstore_api::LockError::ResultTooLarge { size, limit }
                if size == lockstore_api::ledger::MAX_RESULT_BYTES + 1
                    && limit == lockstore_api::ledger::MAX_RESULT_BYTES
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("65536"), "{err}");
    assert_eq!(counter.take_total(), 0, "an oversized result was sent");
    // The run is still running and can store a result that fits.
    let done = store
        .finish(&finish(
            &run,
            Finish::Succeeded {
                result: Some(vec![b'x'; 1000]),
            },
        ))
        .await
        .unwrap();
    assert_eq!(done, FinishOutcome::Finished(RunStatus::Succeeded));
}
