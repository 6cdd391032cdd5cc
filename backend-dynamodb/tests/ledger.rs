//! DynamoDB-specific ledger tests: requests per transition (counted by an
//! SDK interceptor), the item layout (records apart from lock items, no
//! TTL cleanup time unless a retention is opted into), the key limit, the
//! skew-free refusal, a begin retried after its own lease expired, the
//! index check, and a throughput table of begin+succeed next to the lock's
//! acquire+release. The cases that depend on the server run on moto and on
//! dynalite.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use common::Server;
use common::counting::RequestCounter;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RetryOutcome, RunError, RunStatus,
};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockError, LockKey, LockStore, OwnerLabel,
    ReleaseOutcome, RenewOutcome, Ttl,
};
use lockstore_dynamodb::{
    DynamoDbStore, DynamoDbStoreBuilder, TableProblem, TakeoverMode, WallClock,
};
use tokio::sync::OnceCell;

const TABLE: &str = "lockstore_ledger_test";
const LONG: Duration = Duration::from_secs(30);

async fn ensure_table(server: Server) {
    static MOTO: OnceCell<()> = OnceCell::const_new();
    static DYNALITE: OnceCell<()> = OnceCell::const_new();
    let once = match server {
        Server::Moto => &MOTO,
        Server::Dynalite => &DYNALITE,
    };
    once.get_or_init(|| async {
        let store = common::builder_on(server, &server.table(TABLE))
            .build()
            .await
            .expect("a store");
        store.create_table().await.expect("the ledger test table");
    })
    .await;
}

/// A store on moto's ledger table whose requests are counted.
async fn counted_store(name: &str) -> (DynamoDbStore, RequestCounter) {
    counted_store_with(Server::Moto, name, |b| b).await
}

/// A store on `server`'s ledger table, under a prefix of its own, with
/// `configure`'s options, whose requests are counted.
async fn counted_store_with(
    server: Server,
    name: &str,
    configure: impl FnOnce(DynamoDbStoreBuilder) -> DynamoDbStoreBuilder,
) -> (DynamoDbStore, RequestCounter) {
    let prefix = common::fresh_prefix(name);
    store_under(server, &prefix, configure).await
}

/// A counted store on `server`'s ledger table under `prefix`.
async fn store_under(
    server: Server,
    prefix: &str,
    configure: impl FnOnce(DynamoDbStoreBuilder) -> DynamoDbStoreBuilder,
) -> (DynamoDbStore, RequestCounter) {
    ensure_table(server).await;
    let counter = RequestCounter::default();
    let client = Client::from_conf(
        common::sdk_config_builder_on(server)
            .interceptor(counter.clone())
            .build(),
    );
    let store = configure(common::builder_on(server, &server.table(TABLE)))
        .key_prefix(format!("{prefix}/"))
        .build_with_client(client)
        .unwrap();
    (store, counter)
}

/// A wall clock a fixed amount ahead of (or behind) this machine's.
#[derive(Debug, Clone, Copy)]
enum Skew {
    Ahead(Duration),
    Behind(Duration),
}

impl WallClock for Skew {
    fn now(&self) -> SystemTime {
        match *self {
            Skew::Ahead(d) => SystemTime::now() + d,
            Skew::Behind(d) => SystemTime::now() - d,
        }
    }
}

/// `k`'s run record as stored, tombstone or not.
async fn raw_record(
    server: Server,
    store: &DynamoDbStore,
    k: &LockKey,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    store
        .client()
        .get_item()
        .table_name(server.table(TABLE))
        .key(
            store.partition_key(),
            AttributeValue::S(format!("{}\0run", store.item_key(k))),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn cleanup_at(
    store: &DynamoDbStore,
    item: &std::collections::HashMap<String, AttributeValue>,
) -> Option<u64> {
    match item.get(store.cleanup_attribute()) {
        None => None,
        Some(AttributeValue::N(n)) => Some(n.parse().unwrap()),
        Some(other) => panic!("the cleanup attribute is {other:?}"),
    }
}

fn epoch_secs_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
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

/// Review C1: no run record carries a cleanup time unless a retention was
/// opted into, so DynamoDB TTL never deletes a finished (succeeded,
/// ignored) or failed record and a succeeded key is never run again.
async fn records_are_items_apart_from_locks_and_never_expire_by_default(server: Server) {
    let (store, _) = counted_store_with(server, "ledger-layout", |b| b).await;
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
    let lock_item = store
        .client()
        .get_item()
        .table_name(server.table(TABLE))
        .key(store.partition_key(), AttributeValue::S(store.item_key(&k)))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(
        !lock_item.keys().any(|a| a.starts_with("exec_")),
        "the lock item carries run attributes: {lock_item:?}"
    );
    let running = raw_record(server, &store, &k).await.unwrap();
    assert_eq!(
        cleanup_at(&store, &running),
        None,
        "a running record may be deleted by DynamoDB TTL: {running:?}"
    );
    store
        .finish(&finish(&run, Finish::Succeeded { result: None }))
        .await
        .unwrap();
    let finished = raw_record(server, &store, &k).await.unwrap();
    assert_eq!(
        cleanup_at(&store, &finished),
        None,
        "a succeeded record may be deleted by DynamoDB TTL, and its key run again: {finished:?}"
    );
    // Nor an ignored record (until an operator requeues it), nor a failed one.
    for (name, retryable, status) in [
        ("fatal", false, RunStatus::Ignored),
        ("retryable", true, RunStatus::Failed),
    ] {
        let other = key(name);
        let run = begin(&other, "runner", 3);
        store.begin(&run).await.unwrap();
        let error = RunError::new(1, "boom", retryable);
        assert_eq!(
            store
                .finish(&finish(&run, Finish::Failed { error }))
                .await
                .unwrap(),
            FinishOutcome::Finished(status)
        );
        let item = raw_record(server, &store, &other).await.unwrap();
        assert_eq!(
            cleanup_at(&store, &item),
            None,
            "a {status} record may be deleted by DynamoDB TTL: {item:?}"
        );
    }
    assert_eq!(
        store.release(&k, lock.lease_id).await.unwrap(),
        ReleaseOutcome::Released,
        "the run ended the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_records_are_items_apart_from_locks_and_never_expire_by_default() {
    records_are_items_apart_from_locks_and_never_expire_by_default(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_records_are_items_apart_from_locks_and_never_expire_by_default() {
    records_are_items_apart_from_locks_and_never_expire_by_default(Server::Dynalite).await;
}

/// The opt-in: with a `ledger_retention`, a record that ends succeeded or
/// ignored gets a cleanup time that long after its finish (by the
/// finisher's clock); a failed one does not; a requeued one loses it.
async fn a_ledger_retention_dates_finished_records_for_ttl(server: Server) {
    let retention = Duration::from_secs(2 * 24 * 3600);
    let (store, counter) = counted_store_with(server, "ledger-retention", |b| {
        b.ledger_retention(retention)
    })
    .await;
    let k = key("kept-a-while");
    let run = begin(&k, "runner", 1);
    store.begin(&run).await.unwrap();
    counter.take();
    let before = epoch_secs_now();
    store
        .finish(&finish(&run, Finish::Succeeded { result: None }))
        .await
        .unwrap();
    let after = epoch_secs_now() + 1;
    assert_eq!(
        counter.take(),
        one("UpdateItem"),
        "succeed with a retention"
    );
    let item = raw_record(server, &store, &k).await.unwrap();
    let at = cleanup_at(&store, &item).expect("a succeeded record with a retention expires");
    assert!(
        (before + retention.as_secs()..=after + retention.as_secs()).contains(&at),
        "cleanup at {at}, finished between {before} and {after}, retention {retention:?}"
    );
    let fatal = key("fatal");
    let run = begin(&fatal, "runner", 3);
    store.begin(&run).await.unwrap();
    let error = RunError::new(1, "bad input", false);
    store
        .finish(&finish(&run, Finish::Failed { error }))
        .await
        .unwrap();
    let item = raw_record(server, &store, &fatal).await.unwrap();
    assert!(cleanup_at(&store, &item).is_some(), "{item:?}");
    assert_eq!(store.retry(&fatal).await.unwrap(), RetryOutcome::Requeued);
    let item = raw_record(server, &store, &fatal).await.unwrap();
    assert_eq!(
        cleanup_at(&store, &item),
        None,
        "a requeued record may be deleted by DynamoDB TTL: {item:?}"
    );
    let failing = key("failing");
    let run = begin(&failing, "runner", 3);
    store.begin(&run).await.unwrap();
    let error = RunError::new(1, "flaky", true);
    store
        .finish(&finish(&run, Finish::Failed { error }))
        .await
        .unwrap();
    let item = raw_record(server, &store, &failing).await.unwrap();
    assert_eq!(
        cleanup_at(&store, &item),
        None,
        "a failed record waiting for its next attempt may be deleted: {item:?}"
    );
    // Out of range: a config error naming the option.
    let err = common::builder_on(server, &server.table(TABLE))
        .ledger_retention(Duration::from_secs(60))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::Config { .. }) && err.to_string().contains("ledger_retention"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_ledger_retention_dates_finished_records_for_ttl() {
    a_ledger_retention_dates_finished_records_for_ttl(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_a_ledger_retention_dates_finished_records_for_ttl() {
    a_ledger_retention_dates_finished_records_for_ttl(Server::Dynalite).await;
}

/// Review m2: a begin retried with the same lease id after its own lease
/// expired (the request outlived the TTL) finds its own run, as on every
/// other backend: same fence, same attempt, not a new attempt.
async fn a_begin_retried_after_its_own_lease_expired_keeps_the_run(server: Server) {
    let prefix = common::fresh_prefix("ledger-same");
    let (store, _) = store_under(server, &prefix, |b| b).await;
    // The retry is judged by a clock a minute later: the 30 s lease and
    // the allowance are long over by then, whatever the machine's load.
    let (later, _) = store_under(server, &prefix, |b| {
        b.wall_clock(Skew::Ahead(Duration::from_secs(60)))
    })
    .await;
    let k = key("retried");
    let request = begin(&k, "worker", 3);
    let BeginOutcome::Started { fence, attempt, .. } = store.begin(&request).await.unwrap() else {
        panic!("the first begin did not start")
    };
    assert_eq!(attempt, 1);
    let retried = later.begin(&request).await.unwrap();
    assert_eq!(
        retried,
        BeginOutcome::Started {
            fence,
            attempt: 1,
            took_over: false
        },
        "a retried begin started a new attempt"
    );
    let record = later.get(&k).await.unwrap().unwrap();
    assert_eq!((record.attempts, record.fence), (1, Some(fence)));
    assert!(
        record.lease_expires_in.is_some(),
        "the retried begin renewed its lease: {record:?}"
    );
    // Another worker is still refused the live run.
    assert!(matches!(
        later.begin(&begin(&k, "other", 3)).await.unwrap(),
        BeginOutcome::Existing(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_begin_retried_after_its_own_lease_expired_keeps_the_run() {
    a_begin_retried_after_its_own_lease_expired_keeps_the_run(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_a_begin_retried_after_its_own_lease_expired_keeps_the_run() {
    a_begin_retried_after_its_own_lease_expired_keeps_the_run(Server::Dynalite).await;
}

/// Review m13: a run record's index sort key is 21 bytes plus the key, and
/// DynamoDB refuses index keys over 1024 bytes, so run keys over 1003
/// bytes are refused with a typed error before any request (whether the
/// server would have enforced the limit or not); 1003 bytes work.
async fn run_keys_over_1003_bytes_are_refused_before_any_request(server: Server) {
    let (store, counter) = counted_store_with(server, "ledger-long", |b| b).await;
    for len in [1004, 1024] {
        let k = key(&"k".repeat(len));
        let request = begin(&k, "worker", 1);
        counter.take();
        let results = [
            store.begin(&request).await.err(),
            store.enqueue(&k, None).await.err(),
            store.get(&k).await.err(),
            store.retry(&k).await.err(),
            store
                .renew_run(&k, request.lease_id, request.ttl)
                .await
                .err(),
            store
                .finish(&finish(&request, Finish::Succeeded { result: None }))
                .await
                .err(),
        ];
        for err in results {
            match err {
                Some(LockError::InvalidArgument {
                    name: "key",
                    reason,
                }) => assert!(
                    reason.contains("1003") && reason.contains(&len.to_string()),
                    "{reason}"
                ),
                other => panic!("a {len}-byte run key: {other:?}"),
            }
        }
        assert_eq!(counter.take_total(), 0, "a {len}-byte run key was sent");
    }
    // The longest accepted key is written and listed by the index.
    let k = key(&"k".repeat(1003));
    let request = begin(&k, "worker", 1);
    assert!(matches!(
        store.begin(&request).await.unwrap(),
        BeginOutcome::Started { attempt: 1, .. }
    ));
    let page = store
        .query(&lockstore_api::ledger::RunQuery::new(
            lockstore_api::ledger::StatusFilter::Is(RunStatus::Running),
        ))
        .await
        .unwrap();
    assert_eq!(
        page.records.iter().map(|r| &r.key).collect::<Vec<_>>(),
        vec![&k]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_run_keys_over_1003_bytes_are_refused_before_any_request() {
    run_keys_over_1003_bytes_are_refused_before_any_request(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_run_keys_over_1003_bytes_are_refused_before_any_request() {
    run_keys_over_1003_bytes_are_refused_before_any_request(Server::Dynalite).await;
}

/// Review M4: skew-free mode promises exclusion whatever the wall clocks,
/// but the ledger judges run leases by them (a holder 5 s behind, an
/// accurate client with a 1 s allowance would start a second run 6 s in).
/// So a skew-free store refuses every ledger request, with a config error
/// that says what to use, before anything is sent.
async fn a_skew_free_store_refuses_the_ledger_before_any_request(server: Server) {
    let (store, counter) = counted_store_with(server, "ledger-skew-free", |b| {
        b.takeover(TakeoverMode::SkewFree)
            .clock_skew_allowance(Duration::from_secs(1))
            .wall_clock(Skew::Behind(Duration::from_secs(5)))
    })
    .await;
    let k = key("skew-free");
    let request = begin(&k, "holder", 1);
    counter.take();
    let results = [
        store.begin(&request).await.err(),
        store
            .renew_run(&k, request.lease_id, request.ttl)
            .await
            .err(),
        store
            .finish(&finish(&request, Finish::Succeeded { result: None }))
            .await
            .err(),
        store.get(&k).await.err(),
        store.enqueue(&k, None).await.err(),
        store.retry(&k).await.err(),
        store
            .query(&lockstore_api::ledger::RunQuery::new(
                lockstore_api::ledger::StatusFilter::All,
            ))
            .await
            .err(),
        store.purge(Duration::ZERO).await.err(),
    ];
    for err in results {
        match err {
            Some(err @ LockError::Config { .. }) => {
                let words = err.to_string();
                assert!(
                    words.contains("SkewFree") && words.contains("TakeoverMode::WallClock"),
                    "{words}"
                );
            }
            other => panic!("a skew-free ledger request: {other:?}"),
        }
    }
    assert_eq!(
        counter.take_total(),
        0,
        "a skew-free ledger request was sent"
    );
    // Its locks work as before.
    assert!(matches!(
        store
            .try_acquire(&AcquireRequest {
                key: k.clone(),
                lease_id: LeaseId::random(),
                ttl: Ttl::new(LONG).unwrap(),
                owner: OwnerLabel::new("locker").unwrap(),
            })
            .await
            .unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_skew_free_store_refuses_the_ledger_before_any_request() {
    a_skew_free_store_refuses_the_ledger_before_any_request(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_a_skew_free_store_refuses_the_ledger_before_any_request() {
    a_skew_free_store_refuses_the_ledger_before_any_request(Server::Dynalite).await;
}

/// Review m4: the builder's Debug never shows the static credentials'
/// secret.
#[test]
fn builder_debug_redacts_the_secret_key() {
    let builder = DynamoDbStore::builder("some_table")
        .static_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYsecret");
    let shown = format!("{builder:?}");
    assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
    assert!(!shown.contains("Ysecret"), "{shown}");
    assert!(
        shown.contains("AKIDEXAMPLE") && shown.contains("redacted"),
        "{shown}"
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

// ------------------------------------------------- exactly-once effects

/// A ledger store whose renewals are never sent: the run's lease runs out
/// on the server while its guard is still held, as a paused worker's does.
#[derive(Debug)]
struct NoRenewals(DynamoDbStore);

#[lockstore_api::async_trait]
impl LedgerStore for NoRenewals {
    fn backend_name(&self) -> &'static str {
        LedgerStore::backend_name(&self.0)
    }
    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        self.0.begin(request).await
    }
    async fn renew_run(&self, _: &LockKey, _: LeaseId, _: Ttl) -> Result<RenewOutcome, LockError> {
        Ok(RenewOutcome::Renewed)
    }
    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        self.0.finish(request).await
    }
    async fn get(
        &self,
        key: &LockKey,
    ) -> Result<Option<lockstore_api::ledger::RunRecord>, LockError> {
        self.0.get(key).await
    }
    async fn enqueue(
        &self,
        key: &LockKey,
        hash: Option<&lockstore_api::ledger::RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        self.0.enqueue(key, hash).await
    }
    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        self.0.retry(key).await
    }
    async fn query(
        &self,
        query: &lockstore_api::ledger::RunQuery,
    ) -> Result<lockstore_api::ledger::RunPage, LockError> {
        self.0.query(query).await
    }
    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        self.0.purge(older_than).await
    }
}

fn effect_item(
    store: &DynamoDbStore,
    pk: &str,
    fence: u64,
) -> aws_sdk_dynamodb::types::TransactWriteItem {
    aws_sdk_dynamodb::types::TransactWriteItem::builder()
        .put(
            aws_sdk_dynamodb::types::Put::builder()
                .table_name(store.table_name())
                .item(store.partition_key(), AttributeValue::S(pk.to_owned()))
                .item("effect_fence", AttributeValue::N(fence.to_string()))
                .build()
                .unwrap(),
        )
        .build()
}

async fn effect_fence(store: &DynamoDbStore, pk: &str) -> Option<u64> {
    let item = store
        .client()
        .get_item()
        .table_name(store.table_name())
        .key(store.partition_key(), AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item?;
    match item.get("effect_fence") {
        Some(AttributeValue::N(n)) => Some(n.parse().unwrap()),
        other => panic!("effect item without a fence: {other:?}"),
    }
}

async fn started_run(
    ledger: &lockstore_api::ledger::Ledger,
    key: &str,
    ttl: Duration,
) -> lockstore_api::ledger::RunGuard {
    match ledger
        .begin(key, &lockstore_api::ledger::RunOptions::new(ttl))
        .await
        .unwrap()
    {
        lockstore_api::ledger::Begin::Started(run) => run,
        other => panic!("{key} did not start: {other:?}"),
    }
}

/// The fenced-write condition on an item of the caller's: an absent item
/// and a higher fence are written; the same or a lower fence is refused.
async fn fenced_condition_refuses_a_stale_fence(server: Server) {
    use lockstore_dynamodb::fenced_write::{FencedCondition, is_stale_put, is_stale_update};
    let (store, _) = counted_store_with(server, "fenced-write", |b| b).await;
    let pk = format!("{}/report", common::fresh_prefix("fenced-data"));
    let update = async |fence: u64, total: u64| {
        let fenced = FencedCondition::new(lockstore_api::FencingToken::new(fence));
        fenced
            .update(
                store
                    .client()
                    .update_item()
                    .table_name(store.table_name())
                    .key(store.partition_key(), AttributeValue::S(pk.clone()))
                    .update_expression(format!("SET row_total = :total, {}", fenced.set_fence()))
                    .expression_attribute_values(":total", AttributeValue::N(total.to_string())),
            )
            .send()
            .await
    };
    let stored = async || {
        let item = store
            .client()
            .get_item()
            .table_name(store.table_name())
            .key(store.partition_key(), AttributeValue::S(pk.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        (item["fence"].clone(), item["row_total"].clone())
    };
    let num = |v: u64| AttributeValue::N(v.to_string());
    update(9, 90).await.expect("an absent item is written");
    assert!(is_stale_update(&update(5, 50).await.unwrap_err()));
    assert!(is_stale_update(&update(9, 99).await.unwrap_err()));
    assert_eq!(stored().await, (num(9), num(90)));
    update(10, 100).await.expect("a higher fence is applied");
    assert_eq!(stored().await, (num(10), num(100)));
    // The same through PutItem.
    let put = async |fence: u64, total: u64| {
        FencedCondition::new(lockstore_api::FencingToken::new(fence))
            .put(
                store
                    .client()
                    .put_item()
                    .table_name(store.table_name())
                    .item(store.partition_key(), AttributeValue::S(pk.clone()))
                    .item("row_total", AttributeValue::N(total.to_string())),
            )
            .send()
            .await
    };
    assert!(is_stale_put(&put(10, 1).await.unwrap_err()));
    put(11, 110).await.expect("a higher fence is applied");
    assert_eq!(stored().await, (num(11), num(110)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_condition_refuses_a_stale_fence_on_moto() {
    fenced_condition_refuses_a_stale_fence(Server::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_condition_refuses_a_stale_fence_on_dynalite() {
    fenced_condition_refuses_a_stale_fence(Server::Dynalite).await;
}

/// A run's success as an item of the caller's `TransactWriteItems`: it
/// commits with the caller's write; a stale run's transaction (the key was
/// taken over meanwhile) is cancelled whole, with `LeaseLost`, and writes
/// nothing.
async fn success_in_a_transaction_commits_with_the_effect_or_not_at_all(server: Server) {
    let (store, _) = counted_store_with(server, "in-transaction", |b| b).await;
    let ledger: lockstore_api::ledger::Ledger = lockstore_api::ledger::Ledger::from_arc(
        std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>,
    );
    let effects = common::fresh_prefix("effects");

    // Committed with the effect.
    let run = started_run(&ledger, "commit", LONG).await;
    let fence = run.fence().get();
    let pk = format!("{effects}/commit");
    let success = store.succeed_item(run, Some(b"7".to_vec())).unwrap();
    let reply = store
        .client()
        .transact_write_items()
        .transact_items(effect_item(&store, &pk, fence))
        .transact_items(success.item().clone())
        .send()
        .await;
    success.check(reply, 1).unwrap();
    let record = ledger.get("commit").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(record.result.as_deref(), Some(&b"7"[..]));
    assert_eq!(record.fence.unwrap().get(), fence);
    assert_eq!(effect_fence(&store, &pk).await, Some(fence));

    // A stale run: its lease ran out unrenewed and the key was taken over.
    let paused: lockstore_api::ledger::Ledger = lockstore_api::ledger::Ledger::from_arc(
        std::sync::Arc::new(NoRenewals(store.clone())) as std::sync::Arc<dyn LedgerStore>,
    );
    let stale = started_run(&paused, "stale", Duration::from_millis(1500)).await;
    let stale_fence = stale.fence().get();
    let give_up = Instant::now() + Duration::from_secs(60);
    let newer = loop {
        match ledger
            .begin("stale", &lockstore_api::ledger::RunOptions::new(LONG))
            .await
            .unwrap()
        {
            lockstore_api::ledger::Begin::Started(run) => break run,
            lockstore_api::ledger::Begin::Running(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("not taken over: {other:?}"),
        }
    };
    assert!(newer.fence().get() > stale_fence);
    let pk = format!("{effects}/stale");
    let success = store.succeed_item(stale, None).unwrap();
    let reply = store
        .client()
        .transact_write_items()
        .transact_items(effect_item(&store, &pk, stale_fence))
        .transact_items(success.item().clone())
        .send()
        .await;
    let refused = success.check(reply, 1);
    assert!(
        matches!(refused, Err(LockError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert_eq!(
        effect_fence(&store, &pk).await,
        None,
        "the stale effect was written"
    );
    let record = ledger.get("stale").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running);
    assert_eq!(record.fence, Some(newer.fence()));
    newer.succeed(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_in_a_transaction_commits_with_the_effect_or_not_at_all_on_moto() {
    success_in_a_transaction_commits_with_the_effect_or_not_at_all(Server::Moto).await;
}

/// dynalite has no `TransactWriteItems` (`COMPATIBILITY.md`): the
/// transaction fails with a typed, permanent error, never a lease reported
/// lost or a success recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_in_a_transaction_is_a_typed_error_on_dynalite() {
    let (store, _) = counted_store_with(Server::Dynalite, "in-transaction", |b| b).await;
    let ledger: lockstore_api::ledger::Ledger = lockstore_api::ledger::Ledger::from_arc(
        std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>,
    );
    let run = started_run(&ledger, "unsupported", LONG).await;
    let success = store.succeed_item(run, None).unwrap();
    let reply = store
        .client()
        .transact_write_items()
        .transact_items(success.item().clone())
        .send()
        .await;
    match success.check(reply, 0) {
        Err(LockError::Backend {
            retryable: false,
            message,
            ..
        }) => {
            assert!(message.contains("UnknownOperation"), "{message}");
        }
        other => panic!("dynalite answered {other:?}"),
    }
    let record = ledger.get("unsupported").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Running);
}
