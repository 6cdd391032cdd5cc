//! Ledger behaviour specific to the SQL stores (the shared ledger suite is
//! in `conformance.rs`).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, Finish, FinishOutcome, FinishRequest, LedgerStore, RunQuery,
    RunStatus, StatusFilter,
};
use lockstore_api::{LeaseId, LockKey, OwnerLabel, Ttl};
use support::PostgresHarness;
use tracing_subscriber::layer::SubscriberExt;

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

/// Counts the statements sqlx executes on one table: sqlx reports each
/// statement as an event of target `sqlx::query` (with its text in
/// `db.statement`) when it completes — on whatever thread ran it, SQLite's
/// worker thread included. Only statements naming `table` are counted, so
/// other tests' statements and the pool's background pings (which are not
/// statements) cannot change the count, whenever they run.
#[derive(Clone)]
struct StatementCounter {
    table: String,
    count: Arc<AtomicU64>,
}

struct StatementText(Option<String>);

impl tracing::field::Visit for StatementText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.statement" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "db.statement" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut text = StatementText(None);
        event.record(&mut text);
        if text.0.is_some_and(|sql| sql.contains(&self.table)) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Each ledger transition's statement count on `store`, in the order
/// begin (start), begin (refused: the record comes back in the reply),
/// renew, finish, get, enqueue, retry, query, purge.
async fn statements_per_transition(
    store: &dyn LedgerStore,
    counter: &StatementCounter,
) -> Vec<(&'static str, u64)> {
    let key = LockKey::new("counted").unwrap();
    let other = LockKey::new("counted-enqueued").unwrap();
    let run = begin_request(&key);
    let ttl = run.ttl;
    let mut counts = Vec::new();
    let mut count =
        async |name: &'static str, op: std::pin::Pin<Box<dyn Future<Output = ()> + '_>>| {
            let before = counter.count.load(Ordering::SeqCst);
            op.await;
            counts.push((name, counter.count.load(Ordering::SeqCst) - before));
        };
    count(
        "begin",
        Box::pin(async {
            let outcome = store.begin(&run).await.unwrap();
            assert!(
                matches!(outcome, BeginOutcome::Started { .. }),
                "{outcome:?}"
            );
        }),
    )
    .await;
    count(
        "begin refused (record in the reply)",
        Box::pin(async {
            let outcome = store.begin(&begin_request(&key)).await.unwrap();
            assert!(matches!(outcome, BeginOutcome::Existing(_)), "{outcome:?}");
        }),
    )
    .await;
    count(
        "renew",
        Box::pin(async {
            store.renew_run(&key, run.lease_id, ttl).await.unwrap();
        }),
    )
    .await;
    count(
        "succeed",
        Box::pin(async {
            let outcome = store
                .finish(&FinishRequest {
                    key: key.clone(),
                    lease_id: run.lease_id,
                    finish: Finish::Succeeded {
                        result: Some(b"42".to_vec()),
                    },
                })
                .await
                .unwrap();
            assert_eq!(outcome, FinishOutcome::Finished(RunStatus::Succeeded));
        }),
    )
    .await;
    count(
        "get",
        Box::pin(async {
            assert!(store.get(&key).await.unwrap().is_some());
        }),
    )
    .await;
    count(
        "enqueue",
        Box::pin(async {
            store.enqueue(&other, None).await.unwrap();
        }),
    )
    .await;
    count(
        "enqueue (key has a record)",
        Box::pin(async {
            store.enqueue(&other, None).await.unwrap();
        }),
    )
    .await;
    count(
        "retry (refused: succeeded)",
        Box::pin(async {
            store.retry(&key).await.unwrap();
        }),
    )
    .await;
    count(
        "query",
        Box::pin(async {
            let page = store
                .query(&RunQuery::new(StatusFilter::All))
                .await
                .unwrap();
            assert_eq!(page.records.len(), 2);
        }),
    )
    .await;
    count(
        "purge",
        Box::pin(async {
            store.purge(Duration::from_secs(3600)).await.unwrap();
        }),
    )
    .await;
    counts
}

/// One SQL statement per transition on PostgreSQL. On SQLite one as well,
/// except an enqueue or retry that changes nothing: it reads the record's
/// status with a second statement in the same transaction, because SQLite
/// has no `xmax` or data-modifying CTE to say in one statement what it did.
/// (The transaction's `BEGIN`/`COMMIT` name no table and are not counted.)
#[tokio::test]
async fn each_ledger_transition_is_one_statement() {
    let namespace = format!("n{:012x}", rand::random::<u64>() >> 16);
    // Both stores' tables are named `counted_<namespace>…`: the counter
    // counts only their statements.
    let table = format!("counted_{namespace}");
    let counter = StatementCounter {
        table: table.clone(),
        count: Arc::default(),
    };
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(counter.clone()))
        .expect("no other test of this file sets a subscriber");
    let harness = PostgresHarness::default();
    let postgres = lockstore_sql::PostgresStore::builder_with_pool(harness.pool().await)
        .schema(support::TEST_SCHEMA)
        .table(&table)
        .build()
        .await
        .unwrap();
    postgres.ensure_schema().await.unwrap();
    let sqlite =
        lockstore_sql::SqliteStore::builder(support::sqlite_path(&namespace).to_str().unwrap())
            .table(&table)
            .durable(false)
            .build()
            .await
            .unwrap();
    sqlite.ensure_schema().await.unwrap();
    let pg = statements_per_transition(&postgres, &counter).await;
    let lite = statements_per_transition(&sqlite, &counter).await;
    println!("| transition | PostgreSQL statements | SQLite statements |");
    println!("|---|---|---|");
    for ((name, p), (_, l)) in pg.iter().zip(&lite) {
        println!("| {name} | {p} | {l} |");
    }
    for (name, n) in &pg {
        assert_eq!(*n, 1, "PostgreSQL {name} took {n} statements");
    }
    for (name, n) in &lite {
        let expected = if name.contains("(key has a record)") || name.contains("refused: succeeded")
        {
            2
        } else {
            1
        };
        assert_eq!(*n, expected, "SQLite {name} took {n} statements");
    }
}
