//! Exactly-once effects on the SQL stores: fenced upserts refuse a stale
//! fence, and a run's success written in the caller's own transaction
//! commits with the caller's rows or not at all — a takeover racing an open
//! transaction never commits beside it, and a stale transaction commits
//! nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockError;
use lockstore_api::ledger::{Begin, Ledger, LedgerStore, RunGuard, RunOptions, RunStatus};
use lockstore_sql::fenced_write::{FencedUpsert, fence_param};
use lockstore_sql::{PostgresStore, SqliteStore};
use sqlx::{PgPool, SqlitePool};
use support::{PostgresHarness, TEST_SCHEMA, postgres_url, sqlite_path, sqlite_store};

/// Only catches a hang; no assertion depends on it.
const HANG: Duration = Duration::from_secs(60);
/// The run whose transaction is raced: short, so its lease runs out soon.
const SHORT: Duration = Duration::from_millis(600);
/// The taker's own run: long, so its begin is never cut short while it
/// waits for the open transaction's row lock.
const LONG: Duration = Duration::from_secs(30);

fn ledger_of<S: LedgerStore>(store: S) -> Ledger {
    Ledger::from_arc(Arc::new(store) as Arc<dyn LedgerStore>)
}

fn namespace() -> String {
    format!("fx{:012x}", rand::random::<u64>() >> 16)
}

async fn started(ledger: &Ledger, key: &str, ttl: Duration) -> RunGuard {
    match ledger.begin(key, &RunOptions::new(ttl)).await.unwrap() {
        Begin::Started(run) => run,
        other => panic!("{key} did not start: {other:?}"),
    }
}

/// Begins `key` until a run starts (the earlier one's lease ran out).
async fn take_over(ledger: &Ledger, key: &str) -> RunGuard {
    let give_up = tokio::time::Instant::now() + HANG;
    loop {
        match ledger.begin(key, &RunOptions::new(LONG)).await.unwrap() {
            Begin::Started(run) => return run,
            Begin::Running(_) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{key} was not taken over: {other:?}"),
        }
    }
}

struct Postgres {
    namespace: String,
    store: PostgresStore,
    pool: PgPool,
    effects: String,
}

async fn postgres(harness: &PostgresHarness) -> Postgres {
    let namespace = namespace();
    let store = harness.postgres_store(&namespace).await;
    let pool = harness.pool().await;
    let effects = format!("\"{TEST_SCHEMA}\".\"effects_{namespace}\"");
    sqlx::query(&format!(
        "CREATE TABLE {effects} (key text NOT NULL, fence bigint NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    Postgres {
        namespace,
        store,
        pool,
        effects,
    }
}

impl Postgres {
    /// A store on the same table with a pool of its own.
    async fn own_store(&self) -> PostgresStore {
        PostgresStore::builder(postgres_url())
            .schema(TEST_SCHEMA)
            .table(format!("locks_{}", self.namespace))
            .notifications(false)
            .max_connections(2)
            .build()
            .await
            .unwrap()
    }

    async fn effects_of(&self, key: &str) -> Vec<i64> {
        sqlx::query_scalar(&format!(
            "SELECT fence FROM {} WHERE key = $1 ORDER BY fence",
            self.effects
        ))
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    fn insert_sql(&self) -> String {
        format!("INSERT INTO {} (key, fence) VALUES ($1, $2)", self.effects)
    }

    /// The backend of the open transaction.
    async fn blocker(&self, tx: &mut sqlx::PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(tx)
            .await
            .unwrap()
    }

    /// Waits until a session waits for a lock the open transaction holds:
    /// the taker's begin is blocked by it.
    async fn wait_for_a_blocked_begin(&self, blocker: i32) {
        let give_up = tokio::time::Instant::now() + HANG;
        loop {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(blocker)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if blocked > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "the taker's begin never waited for the open transaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Sqlite {
    path: std::path::PathBuf,
    store: SqliteStore,
    pool: SqlitePool,
}

async fn sqlite() -> Sqlite {
    let path = sqlite_path(&namespace());
    let store = sqlite_store(&path).await;
    let pool = store.pool().clone();
    sqlx::query("CREATE TABLE effects (key TEXT NOT NULL, fence INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Sqlite { path, store, pool }
}

impl Sqlite {
    async fn blocker(&self, _: &mut sqlx::SqliteConnection) -> i32 {
        0
    }

    /// A store on the same file with a pool of its own.
    async fn own_store(&self) -> SqliteStore {
        sqlite_store(&self.path).await
    }

    async fn effects_of(&self, key: &str) -> Vec<i64> {
        sqlx::query_scalar("SELECT fence FROM effects WHERE key = ?1 ORDER BY fence")
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    fn insert_sql(&self) -> String {
        "INSERT INTO effects (key, fence) VALUES (?1, ?2)".to_owned()
    }

    /// SQLite cannot show a waiting writer; give the taker's begin a moment
    /// to reach the database's write lock. (If it comes later, it sees the
    /// outcome of the transaction all the same: the assertions hold either
    /// way, only the race is less tight.)
    async fn wait_for_a_blocked_begin(&self, _: i32) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The cases, once per dialect: `$fixture` makes a fixture with `store`,
/// `pool`, `own_store`, `effects_of`, `insert_sql`, `blocker` and
/// `wait_for_a_blocked_begin`; `$upsert` renders a [`FencedUpsert`] in the
/// dialect; `$table_sql` and `$select` make and read its table.
macro_rules! effect_cases {
    ($dialect:ident, $fixture:expr, $upsert:ident, $table_sql:literal, $select:literal) => {
        mod $dialect {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fenced_upsert_refuses_a_stale_fence_and_applies_a_newer_one() {
                let harness = PostgresHarness::default();
                let fx = $fixture(&harness).await;
                let table = format!("rows_{}", namespace());
                sqlx::query(&format!($table_sql, table))
                    .execute(&fx.pool)
                    .await
                    .unwrap();
                let upsert = FencedUpsert::new(table.as_str(), ["day"], ["total"])
                    .schema_if(stringify!($dialect) == "postgres", TEST_SCHEMA)
                    .$upsert()
                    .unwrap();
                let write = async |fence: u64, total: i64| -> bool {
                    sqlx::query(upsert.sql())
                        .bind("2026-11-23")
                        .bind(fence_param(lockstore_api::FencingToken::new(fence)).unwrap())
                        .bind(total)
                        .execute(&fx.pool)
                        .await
                        .unwrap()
                        .rows_affected()
                        == 1
                };
                let stored = async || -> (i64, i64) {
                    sqlx::query_as(&format!($select, table))
                        .fetch_one(&fx.pool)
                        .await
                        .unwrap()
                };
                assert!(write(5, 50).await, "an absent row is written");
                assert!(write(9, 90).await, "a newer fence is applied");
                assert_eq!(stored().await, (9, 90));
                assert!(!write(5, 55).await, "a stale fence is refused");
                assert!(!write(9, 99).await, "the same fence again is refused");
                assert_eq!(stored().await, (9, 90), "refused writes changed nothing");
                assert!(write(10, 100).await);
                assert_eq!(stored().await, (10, 100));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn success_in_the_callers_transaction_commits_with_its_rows() {
                let harness = PostgresHarness::default();
                let fx = $fixture(&harness).await;
                let ledger = ledger_of(fx.store.clone());
                let run = started(&ledger, "commit", LONG).await;
                let fence = run.fence().get();
                let mut tx = fx.pool.begin().await.unwrap();
                sqlx::query(&fx.insert_sql())
                    .bind("commit")
                    .bind(fence as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                fx.store
                    .succeed_json_in(&mut tx, run, &7_u32)
                    .await
                    .unwrap();
                // Not committed yet: neither is visible outside.
                assert_eq!(fx.effects_of("commit").await, Vec::<i64>::new());
                assert_eq!(
                    ledger.get("commit").await.unwrap().unwrap().status,
                    RunStatus::Running
                );
                tx.commit().await.unwrap();
                let record = ledger.get("commit").await.unwrap().unwrap();
                assert_eq!(record.status, RunStatus::Succeeded);
                assert_eq!(record.result_json::<u32>().unwrap(), 7);
                assert_eq!(record.fence.unwrap().get(), fence);
                assert_eq!(fx.effects_of("commit").await, vec![fence as i64]);
                // The guard was detached: nothing failed the run afterwards.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(
                    ledger.get("commit").await.unwrap().unwrap().status,
                    RunStatus::Succeeded
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stale_transaction_commits_nothing() {
                let harness = PostgresHarness::default();
                let fx = $fixture(&harness).await;
                let ledger = ledger_of(fx.store.clone());
                // The stale run's store has a pool of its own, closed once
                // the run started: its renewals fail (as a partitioned
                // worker's do), its lease runs out, and another run takes
                // the key over. Its transaction runs on the shared pool.
                let cut_off = fx.own_store().await;
                let stale = started(&ledger_of(cut_off.clone()), "stale", SHORT).await;
                cut_off.pool().close().await;
                let stale_fence = stale.fence().get();
                let newer = take_over(&ledger, "stale").await;
                let newer_fence = newer.fence().get();
                assert!(newer_fence > stale_fence);

                let mut tx = fx.pool.begin().await.unwrap();
                sqlx::query(&fx.insert_sql())
                    .bind("stale")
                    .bind(stale_fence as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let refused = fx.store.succeed_in(&mut tx, stale, None).await;
                assert!(
                    matches!(refused, Err(LockError::LeaseLost { .. })),
                    "{refused:?}"
                );
                tx.rollback().await.unwrap();
                assert_eq!(fx.effects_of("stale").await, Vec::<i64>::new());
                let record = ledger.get("stale").await.unwrap().unwrap();
                assert_eq!(record.status, RunStatus::Running);
                assert_eq!(record.fence.unwrap().get(), newer_fence);

                let mut tx = fx.pool.begin().await.unwrap();
                sqlx::query(&fx.insert_sql())
                    .bind("stale")
                    .bind(newer_fence as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                fx.store.succeed_in(&mut tx, newer, None).await.unwrap();
                tx.commit().await.unwrap();
                assert_eq!(fx.effects_of("stale").await, vec![newer_fence as i64]);
                let record = ledger.get("stale").await.unwrap().unwrap();
                assert_eq!(record.status, RunStatus::Succeeded);
                assert_eq!(record.fence.unwrap().get(), newer_fence);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_takeover_racing_an_open_transaction_never_commits_beside_it() {
                let harness = PostgresHarness::default();
                let fx = $fixture(&harness).await;
                let ledger = ledger_of(fx.store.clone());
                for commit in [true, false] {
                    let key = if commit {
                        "race-commit"
                    } else {
                        "race-rollback"
                    };
                    let run = started(&ledger, key, SHORT).await;
                    let fence = run.fence().get();
                    let mut tx = fx.pool.begin().await.unwrap();
                    sqlx::query(&fx.insert_sql())
                        .bind(key)
                        .bind(fence as i64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    fx.store.succeed_in(&mut tx, run, None).await.unwrap();
                    let blocker = fx.blocker(&mut tx).await;
                    // No renewals from here: let the lease run out on the
                    // server, so only the open transaction keeps the taker out.
                    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
                    let taker = {
                        let ledger = ledger.clone();
                        tokio::spawn(async move {
                            ledger.begin(key, &RunOptions::new(LONG)).await.unwrap()
                        })
                    };
                    fx.wait_for_a_blocked_begin(blocker).await;
                    if commit {
                        tx.commit().await.unwrap();
                    } else {
                        tx.rollback().await.unwrap();
                    }
                    let outcome = tokio::time::timeout(HANG, taker).await.unwrap().unwrap();
                    match (commit, outcome) {
                        (true, Begin::AlreadySucceeded(record)) => {
                            assert_eq!(record.fence.unwrap().get(), fence);
                            assert_eq!(fx.effects_of(key).await, vec![fence as i64]);
                        }
                        (false, Begin::Started(newer)) => {
                            assert!(newer.fence().get() > fence);
                            assert_eq!(fx.effects_of(key).await, Vec::<i64>::new());
                            newer.succeed(None).await.unwrap();
                        }
                        (commit, other) => {
                            panic!("commit = {commit}: the taker got {other:?}")
                        }
                    }
                }
            }
        }
    };
}

trait SchemaIf {
    fn schema_if(self, yes: bool, schema: &str) -> Self;
}

impl SchemaIf for FencedUpsert {
    fn schema_if(self, yes: bool, schema: &str) -> Self {
        if yes { self.schema(schema) } else { self }
    }
}

async fn pg_fixture(harness: &PostgresHarness) -> Postgres {
    postgres(harness).await
}

async fn sqlite_fixture(_: &PostgresHarness) -> Sqlite {
    sqlite().await
}

effect_cases!(
    postgres,
    pg_fixture,
    postgres,
    "CREATE TABLE lockstore_conformance.\"{}\" (day text PRIMARY KEY, fence bigint NOT NULL, total bigint NOT NULL)",
    "SELECT fence, total FROM lockstore_conformance.\"{}\""
);
effect_cases!(
    sqlite,
    sqlite_fixture,
    sqlite,
    "CREATE TABLE \"{}\" (day TEXT PRIMARY KEY, fence INTEGER NOT NULL, total INTEGER NOT NULL)",
    "SELECT fence, total FROM \"{}\""
);
