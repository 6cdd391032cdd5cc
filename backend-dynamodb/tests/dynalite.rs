//! What dynalite (`LOCKSTORE_TEST_DYNALITE_URL`), the second DynamoDB-compatible
//! test server, lacks, and that the store copes with it (see
//! `COMPATIBILITY.md`): no TTL operations, so `create_table` succeeds and
//! says cleanup is off; no old item with a refused condition, so a refused
//! acquire or begin reads it with one counted `GetItem`; no index added to
//! an existing table, so `create_table` says to recreate it.

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use common::Server;
use common::counting::RequestCounter;
use lockstore_api::ledger::{BeginOutcome, BeginRequest, LedgerStore};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockError, LockKey, LockStore, OwnerLabel, Ttl,
};
use lockstore_dynamodb::{DynamoDbStore, TableProblem};

const LONG: Duration = Duration::from_secs(30);

/// A store on dynalite's ledger table (made by `create_table`, which is
/// what puts the status index on it) whose requests are counted.
async fn counted_store(name: &str) -> (DynamoDbStore, RequestCounter) {
    let table = Server::Dynalite.table("lockstore_dynalite_only");
    common::builder_on(Server::Dynalite, &table)
        .build()
        .await
        .unwrap()
        .create_table()
        .await
        .unwrap();
    let counter = RequestCounter::default();
    let client = Client::from_conf(
        common::sdk_config_builder_on(Server::Dynalite)
            .interceptor(counter.clone())
            .build(),
    );
    let store = common::builder_on(Server::Dynalite, &table)
        .key_prefix(format!("{}/", common::fresh_prefix(name)))
        .build_with_client(client)
        .unwrap();
    (store, counter)
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

fn owner(name: &str) -> OwnerLabel {
    OwnerLabel::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_succeeds_without_ttl_operations_and_says_cleanup_is_off() {
    let table = Server::Dynalite.table(&common::fresh_prefix("no-ttl"));
    let store = common::builder_on(Server::Dynalite, &table)
        .build()
        .await
        .unwrap();
    store.create_table().await.expect("created despite no TTL");

    let problems = store.table_problems().await.unwrap();
    assert!(
        matches!(&problems[..], [TableProblem::TtlUnsupported { .. }]),
        "{problems:?}"
    );
    assert!(problems[0].is_advisory());
    let words = problems[0].to_string();
    assert!(
        words.contains("TTL cleanup") && words.contains("off"),
        "{words}"
    );
    // Nothing the user can fix, and the store works: the check passes.
    store.check_table().await.expect("an advisory problem only");
    // A second create_table on the finished table changes nothing.
    store.create_table().await.unwrap();

    // And the table serves locks and the ledger.
    let k = key("works");
    let request = AcquireRequest {
        key: k.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: owner("alice"),
    };
    assert!(matches!(
        store.try_acquire(&request).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_acquire_reads_the_holder_with_one_counted_get_item() {
    let (store, counter) = counted_store("dynalite-acquire").await;
    let request = |who: &str| AcquireRequest {
        key: key("held"),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: owner(who),
    };
    store.try_acquire(&request("alice")).await.unwrap();
    counter.take();

    let refused = store.try_acquire(&request("bob")).await.unwrap();
    let AcquireOutcome::Held(holder) = refused else {
        panic!("a held key was granted again: {refused:?}")
    };
    assert_eq!(holder.owner(), "alice");
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1), ("GetItem".to_owned(), 1)].into(),
        "dynalite does not return the old item with a refusal"
    );
    assert_eq!(store.holder_reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_begin_reads_the_record_with_one_counted_get_item() {
    let (store, counter) = counted_store("dynalite-begin").await;
    let begin = |who: &str| BeginRequest {
        key: key("running"),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: owner(who),
        max_attempts: 2,
        request_hash: None,
    };
    let started = store.begin(&begin("alice")).await.unwrap();
    assert!(matches!(started, BeginOutcome::Started { attempt: 1, .. }));
    counter.take();

    let refused = store.begin(&begin("bob")).await.unwrap();
    let BeginOutcome::Existing(record) = refused else {
        panic!("a live run was started again: {refused:?}")
    };
    assert_eq!(record.owner.as_deref(), Some("alice"));
    assert_eq!(
        counter.take(),
        [("UpdateItem".to_owned(), 1), ("GetItem".to_owned(), 1)].into(),
        "dynalite does not return the old record with a refusal"
    );
    assert_eq!(store.ledger_reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_without_the_ledger_index_is_a_config_error_saying_recreate() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let table = Server::Dynalite.table(&common::fresh_prefix("no-index"));
    let store = common::builder_on(Server::Dynalite, &table)
        .build()
        .await
        .unwrap();
    // A table made elsewhere: only the key, no ledger index.
    store
        .client()
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("lock_key")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("lock_key")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let err = store.create_table().await.unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    let words = err.to_string();
    assert!(
        words.contains("exec_status-index") && words.contains("create_table"),
        "{words}"
    );
    // Locks do not need the index: they work on that table all the same.
    let request = AcquireRequest {
        key: key("lock-only"),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(LONG).unwrap(),
        owner: owner("alice"),
    };
    assert!(matches!(
        store.try_acquire(&request).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
}
