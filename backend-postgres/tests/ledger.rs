//! Ledger behaviour specific to the SQL stores (the shared ledger suite is
//! in `conformance.rs`).

mod support;

use std::time::Duration;

use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, Finish, FinishOutcome, FinishRequest, LedgerStore, RunStatus,
};
use lockstore_api::{LeaseId, LockKey, OwnerLabel, Ttl};
use support::PostgresHarness;

fn begin_request(key: &LockKey) -> BeginRequest {
    BeginRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(Duration::from_secs(60)).unwrap(),
        owner: OwnerLabel::new("worker").unwrap(),
        max_attempts: 3,
        request_hash: None,
    }
}

/// A run finished through one store wakes a waiter of another store (another
/// process, as far as PostgreSQL can tell): the finish is announced by NOTIFY
/// from the table's trigger, not only in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_wakes_waiters_of_other_stores_through_notify() {
    let harness = PostgresHarness::default();
    let namespace = format!("n{:012x}", rand::random::<u64>() >> 16);
    let finisher = harness.postgres_store(&namespace).await;
    let waiter = harness.postgres_store(&namespace).await;
    let key = LockKey::new("notified").unwrap();
    let request = begin_request(&key);
    assert!(matches!(
        finisher.begin(&request).await.unwrap(),
        BeginOutcome::Started { .. }
    ));
    let signal = waiter
        .finish_signal(&key)
        .expect("PostgreSQL stores announce finishes");
    let outcome = finisher
        .finish(&FinishRequest {
            key: key.clone(),
            lease_id: request.lease_id,
            finish: Finish::Succeeded { result: None },
        })
        .await
        .unwrap();
    assert_eq!(outcome, FinishOutcome::Finished(RunStatus::Succeeded));
    // The promise is "woken by the finish"; the bound only catches a signal
    // that never fires.
    tokio::time::timeout(Duration::from_secs(30), signal)
        .await
        .expect("the other store's waiter was not woken by the finish");
}
