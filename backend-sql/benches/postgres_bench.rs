//! The PostgreSQL store next to its peer, on one server, in one run,
//! variants interleaved over rounds, with `SELECT 1` through the same pool
//! (one round trip, RTT) as the unit (see `lockstore_conformance::bench`):
//!
//! * uncontended acquire+release: p50, p99, in RTTs, cycles/s, next to
//!   sqlx's `PgAdvisoryLock` (session advisory lock + unlock on a held
//!   connection: no fence, no lease, no holder report);
//! * hand-off (release → the next waiter holds) with `LISTEN/NOTIFY` and
//!   with polling only;
//! * requests counted per hand-off among 8 and 64 waiters of one key, sharing
//!   one client (in its line) or one client each;
//! * contention: 1, 8 and 64 clients on one key and on 64 keys, cycles/s and
//!   p99 acquire latency, against `PgAdvisoryLock` (blocking
//!   `pg_advisory_lock`, one connection per client);
//! * what `NOTIFY` costs at 64 clients: lockstore's own statements sent by
//!   hand, with the release notifying on every release (as before) and only
//!   when a waiter asked (as now);
//! * connections a store holds;
//! * semaphores: permit acquire + release next to the lock's, uncontended
//!   and with 8 and 64 clients on one key, N = 4.
//!
//! `scripts/servers.sh run cargo bench -p lockstore-sql --bench postgres_bench`
//! (or a server in `LOCKSTORE_TEST_POSTGRES_URL`). `BENCH_ROUNDS`,
//! `BENCH_SECTIONS` (uncontended, handoff, contention, notify, connections,
//! semaphores)
//! and `BENCH_DIAG=1` as in the Redis bench. Prints tables; asserts nothing
//! about time.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{AcquireOptions, LeaseId, LockClient};
use lockstore_conformance::bench::{self, Plan, Table, Variant, us};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_sql::PostgresStore;
use sqlx::PgPool;
use sqlx::postgres::{PgAdvisoryLock, PgPoolOptions};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);
const SCHEMA: &str = "lockstore_bench";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15)
}

struct Setup {
    url: String,
    table: String,
    store: PostgresStore,
    polling: PostgresStore,
    /// Connections for the advisory-lock peer, one per client.
    peer_pool: PgPool,
    peer_id: String,
}

async fn run() {
    let url = server_url(Service::Postgres);
    let table = format!("bench_{:08x}", rand::random::<u32>());
    let store = PostgresStore::builder(url.as_str())
        .schema(SCHEMA)
        .table(&table)
        .max_connections(64)
        .build()
        .await
        .expect("connect");
    store.ensure_schema().await.expect("schema");
    let polling = PostgresStore::builder(url.as_str())
        .schema(SCHEMA)
        .table(&table)
        .notifications(false)
        .build()
        .await
        .expect("connect");
    let peer_pool = PgPoolOptions::new()
        .max_connections(64)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .expect("peer pool");
    let setup = Arc::new(Setup {
        peer_id: table.clone(),
        url,
        table,
        store,
        polling,
        peer_pool,
    });
    let rounds = rounds();
    println!(
        "lockstore-sql PostgreSQL bench: {rounds} rounds (BENCH_ROUNDS), sections: {}",
        bench::sections()
    );
    if bench::section("uncontended") {
        uncontended(&setup, rounds).await;
    }
    if bench::section("handoff") {
        handoff_table(&setup, rounds).await;
        bench::handoff_requests_table(
            "PostgreSQL",
            rounds.div_ceil(3).max(3),
            Arc::new(setup.store.clone()),
            TTL,
        )
        .await;
    }
    if bench::section("contention") {
        contention(&setup, rounds.div_ceil(3).max(3)).await;
    }
    if bench::section("notify") {
        notify_table(&setup, rounds.div_ceil(3).max(3)).await;
    }
    if bench::section("connections") {
        connections_table(&setup).await;
    }
    if bench::section("semaphores") {
        bench::semaphore_table(
            "PostgreSQL",
            rounds.div_ceil(3).max(3),
            setup.store.clone(),
            TTL,
        )
        .await;
    }
    sqlx::raw_sql(&format!(
        "DROP TABLE {}; DROP TABLE IF EXISTS \"{SCHEMA}\".\"{}_semaphores\"; DROP SEQUENCE \"{SCHEMA}\".\"{}_fence\"",
        setup.store.table_name(),
        setup.table,
        setup.table
    ))
    .execute(setup.store.pool())
    .await
    .expect("drop the bench table");
}

fn select_one(setup: &Arc<Setup>) -> Variant {
    let pool = setup.store.pool().clone();
    Variant::timed("SELECT 1 (the unit: 1 RTT)", move |_| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .expect("SELECT 1");
        }
    })
}

/// A session advisory lock's id for `name`, hashed by the server as sqlx does.
fn advisory(setup: &Setup, name: &str) -> PgAdvisoryLock {
    PgAdvisoryLock::new(format!("{}-{name}", setup.peer_id))
}

async fn uncontended(setup: &Arc<Setup>, rounds: usize) {
    let plan = Plan {
        rounds,
        per_round: 300,
        warm_up: 30,
    };
    let [store_cycle, client_cycle] = bench::uncontended_variants(&setup.store, TTL);
    let mut variants = vec![
        select_one(setup),
        store_cycle,
        client_cycle,
        Variant::timed("peer: PgAdvisoryLock acquire + release_now", {
            let s = Arc::clone(setup);
            move |_| {
                let s = Arc::clone(&s);
                async move {
                    let lock = advisory(&s, "uncontended");
                    let conn = s.peer_pool.acquire().await.expect("connection");
                    let guard = lock.acquire(conn).await.expect("advisory lock");
                    guard.release_now().await.expect("advisory unlock");
                }
            }
        }),
    ];
    if std::env::var_os("BENCH_DIAG").is_some() {
        variants.push(Variant::timed("diag: SELECT 1 twice", {
            let pool = setup.store.pool().clone();
            move |_| {
                let pool = pool.clone();
                async move {
                    for _ in 0..2 {
                        sqlx::query("SELECT 1")
                            .execute(&pool)
                            .await
                            .expect("SELECT");
                    }
                }
            }
        }));
        variants.push(Variant::timed("diag: UPDATE one row twice (2 commits)", {
            let pool = setup.store.pool().clone();
            let table = setup.store.table_name().to_owned();
            move |_| {
                let pool = pool.clone();
                let sql = format!("UPDATE {table} SET updated_at = now() WHERE key = $1");
                async move {
                    for _ in 0..2 {
                        sqlx::query(&sql)
                            .bind("uncontended")
                            .execute(&pool)
                            .await
                            .expect("UPDATE");
                    }
                }
            }
        }));
    }
    let figures = bench::sequential(&variants, plan).await;
    bench::print_uncontended("PostgreSQL", "SELECT 1", &figures, plan, 2.4);
}

async fn handoff_table(setup: &Arc<Setup>, rounds: usize) {
    let plan = Plan {
        rounds,
        per_round: 8,
        warm_up: 1,
    };
    let variants = vec![
        select_one(setup),
        Variant::self_timed("hand-off, LISTEN/NOTIFY", {
            let s = Arc::clone(setup);
            move |_| bench::handoff(s.store.clone(), s.store.clone(), TTL)
        }),
        Variant::self_timed("hand-off, polling only (default backoff)", {
            let s = Arc::clone(setup);
            move |_| bench::handoff(s.store.clone(), s.polling.clone(), TTL)
        }),
        Variant::self_timed("SELECT 1 after 20 ms idle (a cold RTT)", {
            let pool = setup.store.pool().clone();
            move |_| {
                let pool = pool.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let started = Instant::now();
                    sqlx::query("SELECT 1")
                        .execute(&pool)
                        .await
                        .expect("SELECT 1");
                    started.elapsed()
                }
            }
        }),
        Variant::self_timed(
            "peer: pg_advisory_unlock sent → the blocked locker holds",
            {
                let s = Arc::clone(setup);
                move |_| advisory_handoff(Arc::clone(&s))
            },
        ),
    ];
    let figures = bench::sequential(&variants, plan).await;
    bench::print_handoff("PostgreSQL", "SELECT 1", &figures, plan, "NOTIFY");
}

/// The peer's hand-off: a session blocked in `pg_advisory_lock` is granted
/// the lock by the server when the holder unlocks.
async fn advisory_handoff(s: Arc<Setup>) -> Duration {
    let lock = advisory(&s, "handoff");
    let holder = s.peer_pool.acquire().await.expect("connection");
    let guard = lock.acquire(holder).await.expect("advisory lock");
    let waiting = tokio::spawn({
        let s = Arc::clone(&s);
        async move {
            let lock = advisory(&s, "handoff");
            let conn = s.peer_pool.acquire().await.expect("connection");
            let guard = lock.acquire(conn).await.expect("advisory lock");
            let at = Instant::now();
            guard.release_now().await.expect("unlock");
            at
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let released = Instant::now();
    guard.release_now().await.expect("unlock");
    waiting.await.expect("waiter task") - released
}

async fn contention(setup: &Arc<Setup>, rounds: usize) {
    let client = LockClient::new(setup.store.clone());
    bench::contention_table("PostgreSQL", rounds, |tag| {
        vec![
            select_one(setup),
            bench::waiting_client(
                "lockstore (LockClient, LISTEN/NOTIFY wake-up)",
                &client,
                tag,
                TTL,
            ),
            Variant::self_timed("peer: PgAdvisoryLock (blocking, a connection each)", {
                let s = Arc::clone(setup);
                let tag = tag.to_owned();
                move |key| {
                    let s = Arc::clone(&s);
                    let name = format!("{tag}-{key}");
                    async move {
                        let started = Instant::now();
                        let conn = s.peer_pool.acquire().await.expect("connection");
                        let lock = advisory(&s, &name);
                        let guard = lock.acquire(conn).await.expect("advisory lock");
                        let took = started.elapsed();
                        guard.release_now().await.expect("unlock");
                        took
                    }
                }
            }),
        ]
    })
    .await;
}

/// lockstore's acquire and release statements sent by hand, the release
/// notifying always (as before this change) or never (as now when nobody
/// waits), 64 clients on 64 keys and on one key (try once, no waiting).
async fn notify_table(setup: &Arc<Setup>, rounds: usize) {
    let table_name = setup.store.table_name().to_owned();
    let seq = format!("\"{SCHEMA}\".\"{}_fence\"", setup.table);
    let acquire = Arc::new(
        include_str!("../src/sql/postgres/acquire.sql")
            .replace("{table}", &table_name)
            .replace("{fence_seq}", &seq),
    );
    let release = include_str!("../src/sql/postgres/release.sql").replace("{table}", &table_name);
    let release_always = Arc::new(release.replace(
        "CASE WHEN wake THEN pg_notify($3, key) END",
        "pg_notify($3, key)",
    ));
    let release_when_asked = Arc::new(release);
    assert_ne!(release_always, release_when_asked, "the edit applied");
    let channel = Arc::new(setup.store.notify_channel().to_owned());
    let mut out = Table::new(
        format!(
            "PostgreSQL: what NOTIFY on every release costs (lockstore's statements by hand, {rounds} rounds interleaved, try once without waiting)"
        ),
        &[
            "clients × keys",
            "release",
            "cycles/s",
            "p99 cycle",
            "vs notify-always",
        ],
    );
    for (clients, keys) in [(64, 64), (64, 1)] {
        let plan = Plan {
            rounds,
            per_round: 16,
            warm_up: 64,
        };
        let variant = |name: &str, release: Arc<String>| {
            let pool = setup.store.pool().clone();
            let (acquire, channel) = (Arc::clone(&acquire), Arc::clone(&channel));
            let tag = format!("notify-{clients}-{keys}");
            Variant::timed(name, move |key| {
                let (pool, acquire, release, channel) = (
                    pool.clone(),
                    Arc::clone(&acquire),
                    Arc::clone(&release),
                    Arc::clone(&channel),
                );
                let key = format!("{tag}-{key}");
                async move {
                    let id = LeaseId::random().to_string();
                    let acquired: bool = sqlx::query_scalar(&acquire)
                        .bind(&key)
                        .bind(&id)
                        .bind("bench")
                        .bind(30_000_i64)
                        .bind(false)
                        .fetch_one(&pool)
                        .await
                        .expect("acquire");
                    if acquired {
                        sqlx::query(&release)
                            .bind(&key)
                            .bind(&id)
                            .bind(channel.as_str())
                            .fetch_optional(&pool)
                            .await
                            .expect("release");
                    }
                }
            })
        };
        let variants = vec![
            variant("NOTIFY on every release (before)", release_always.clone()),
            variant(
                "NOTIFY only when a waiter asked (now; nobody waits here)",
                release_when_asked.clone(),
            ),
        ];
        let figures = bench::concurrent(&variants, plan, clients, keys).await;
        for f in &figures {
            out.row(vec![
                format!("{clients} × {keys}"),
                f.name.clone(),
                format!("{:.0}", f.per_second()),
                us(f.p99()),
                format!("{:.2}×", f.rate_over(&figures[0])),
            ]);
        }
    }
    out.print();
}

/// Connections of a fresh store: at rest after `build` (the pool opens
/// connections lazily, the listener at once), and while 8 clients cycle.
async fn connections_table(setup: &Setup) {
    let count = || async {
        let pool = setup.peer_pool.clone();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        n
    };
    let before = count().await;
    let store = PostgresStore::builder(setup.url.as_str())
        .schema(SCHEMA)
        .table(&setup.table)
        .build()
        .await
        .expect("connect");
    let at_rest = count().await;
    let client = LockClient::new(store.clone());
    let busy: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let lease = client
                        .acquire_lease(format!("conn-{i}").as_str(), AcquireOptions::new(TTL))
                        .await
                        .expect("acquire");
                    client.release(&lease).await.expect("release");
                }
            })
        })
        .collect();
    for task in busy {
        task.await.expect("client");
    }
    let after_use = count().await;
    let mut table = Table::new(
        "PostgreSQL connections held by one store (default pool of 10)",
        &["state", "connections"],
    );
    table.row(vec![
        "after build (the LISTEN connection; the pool connects on demand)".into(),
        (at_rest - before).to_string(),
    ]);
    table.row(vec![
        "after 8 clients cycled at once (pool connections stay open, idle)".into(),
        (after_use - before).to_string(),
    ]);
    table.print();
    drop(store);
}
