//! The shared ledger conformance suite (the run-once contract) against two
//! independent DynamoDB-compatible servers: moto (or DynamoDB Local, from
//! `LOCKSTORE_TEST_DYNAMODB_URL`), as `dynamodb::…`, and dynalite (from
//! `LOCKSTORE_TEST_DYNALITE_URL`), as `dynalite::…`. dynalite does not
//! return the old item with a refused condition, so there a refused begin
//! reads it with one `GetItem` (counted by `ledger_reads`); it has no TTL,
//! so `create_table` leaves cleanup off there and says so.
//!
//! The ledger needs the status index, so these cases use their own table,
//! [`LEDGER_TABLE`] (with a `_dynalite` suffix on dynalite), made by
//! `create_table` (which adds the index); each namespace is a key prefix. Profile as for the lock suite: no finish
//! notifications on DynamoDB (waiters poll with backoff), and the 150 ms
//! tolerance covers the 20 ms clock-skew allowance and emulator latency.
//! One difference more: `short_ttl` is 1 s instead of 400 ms. A query asks
//! every index shard of every wanted status (up to 5 × 4 requests a page),
//! and the query case pages through 5 filters both ways while runs with the
//! "long" TTL (25 short TTLs) must stay live: on moto, a single-threaded
//! server shared by parallel cases, that took more than 10 s.

mod common;

use std::sync::Arc;

use common::Server;
use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_conformance::{Harness, Profile};
use lockstore_dynamodb::DynamoDbStore;
use tokio::sync::OnceCell;

/// The table of the ledger tests (with `exec_status-index`).
const LEDGER_TABLE: &str = "lockstore_ledger_test";

async fn ledger_store(server: Server, namespace: &str) -> DynamoDbStore {
    static MOTO: OnceCell<()> = OnceCell::const_new();
    static DYNALITE: OnceCell<()> = OnceCell::const_new();
    let table = server.table(LEDGER_TABLE);
    let created = match server {
        Server::Moto => &MOTO,
        Server::Dynalite => &DYNALITE,
    };
    created
        .get_or_init(|| async {
            let store = common::builder_on(server, &table)
                .build()
                .await
                .expect("a store");
            store.create_table().await.expect("the ledger test table");
        })
        .await;
    common::builder_on(server, &table)
        .key_prefix(format!("{namespace}/"))
        .build()
        .await
        .expect("a store")
}

struct DynamoDbHarness(Server);

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
        Arc::new(ledger_store(self.0, namespace).await)
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(ledger_store(self.0, namespace).await))
    }
}

lockstore_conformance::ledger_suite!(dynamodb, DynamoDbHarness(Server::Moto));
lockstore_conformance::ledger_suite!(dynalite, DynamoDbHarness(Server::Dynalite));
