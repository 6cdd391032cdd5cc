//! The shared ledger conformance suite (the run-once contract) against a
//! DynamoDB-compatible server (moto, or dynalite / DynamoDB Local, from
//! `LOCKSTORE_TEST_DYNAMODB_URL`).
//!
//! The ledger needs the status index, so these cases use their own table,
//! [`LEDGER_TABLE`], made by `create_table` (which adds the index); each
//! namespace is a key prefix. Profile as for the lock suite: no finish
//! notifications on DynamoDB (waiters poll with backoff), and the 150 ms
//! tolerance covers the 20 ms clock-skew allowance and emulator latency.
//! One difference more: `short_ttl` is 1 s instead of 400 ms. A query asks
//! every index shard of every wanted status (up to 5 × 4 requests a page),
//! and the query case pages through 5 filters both ways while runs with the
//! "long" TTL (25 short TTLs) must stay live: on moto, a single-threaded
//! server shared by parallel cases, that took more than 10 s.

mod common;

use std::sync::Arc;

use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_conformance::{Harness, Profile};
use lockstore_dynamodb::DynamoDbStore;
use tokio::sync::OnceCell;

/// The table of the ledger tests (with `exec_status-index`).
const LEDGER_TABLE: &str = "lockstore_ledger_test";

async fn ledger_store(namespace: &str) -> DynamoDbStore {
    static CREATED: OnceCell<()> = OnceCell::const_new();
    CREATED
        .get_or_init(|| async {
            let store = common::builder(LEDGER_TABLE)
                .build()
                .await
                .expect("a store");
            store.create_table().await.expect("the ledger test table");
        })
        .await;
    common::builder(LEDGER_TABLE)
        .key_prefix(format!("{namespace}/"))
        .build()
        .await
        .expect("a store")
}

struct DynamoDbHarness;

#[async_trait::async_trait]
impl Harness for DynamoDbHarness {
    fn profile(&self) -> Profile {
        Profile {
            release_notifications: false,
            concurrent_acquisitions: 5_000,
            short_ttl: std::time::Duration::from_secs(1),
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(ledger_store(namespace).await)
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(ledger_store(namespace).await))
    }
}

lockstore_conformance::ledger_suite!(dynamodb, DynamoDbHarness);
