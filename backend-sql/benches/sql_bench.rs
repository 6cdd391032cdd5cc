//! Figures for the PostgreSQL and SQLite stores, printed as a table.
//!
//! `LOCKSTORE_TEST_POSTGRES_URL=postgres://… cargo bench -p lockstore-sql --bench sql_bench`
//!
//! * uncontended acquire+release latency (p50, p99) next to `SELECT 1`;
//! * sequential cycles/s next to sqlx's `PgAdvisoryLock` try-acquire/release;
//! * hand-off latency (release → waiter holds the key) with NOTIFY and with
//!   polling only (`notifications(false)`, the client's default backoff);
//! * SQLite cycles/s with 1 and 4 processes on one file (this binary re-run
//!   as children).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstore_api::{
    AcquireOptions, AcquireOutcome, AcquireRequest, LeaseId, LockClient, LockKey, LockStore,
    OwnerLabel, Ttl,
};
use lockstore_sql::{PostgresStore, SqliteStore};
use sqlx::postgres::PgAdvisoryLock;

const CHILD_DB: &str = "LOCKSTORE_BENCH_SQLITE_CHILD";
const LATENCY_SAMPLES: usize = 2000;
const CYCLES: usize = 3000;
const HANDOFFS: usize = 40;
const SQLITE_CYCLES: usize = 2000;

fn request(key: &str) -> AcquireRequest {
    AcquireRequest {
        key: LockKey::new(key).unwrap(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("bench").unwrap(),
    }
}

async fn cycle(store: &dyn LockStore, key: &str) {
    let req = request(key);
    match store.try_acquire(&req).await.unwrap() {
        AcquireOutcome::Acquired { .. } => {}
        AcquireOutcome::Held(h) => panic!("bench key held by {h:?}"),
    }
    store.release(&req.key, req.lease_id).await.unwrap();
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        return sqlite_child(&db);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    match std::env::var("LOCKSTORE_TEST_POSTGRES_URL") {
        Ok(url) => rt.block_on(postgres(&url, &mut rows)),
        Err(_) => rows.push((
            "PostgreSQL".into(),
            "skipped: set LOCKSTORE_TEST_POSTGRES_URL".into(),
        )),
    }
    rt.block_on(sqlite(&mut rows));
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!("\n{:width$}  result", "measure");
    println!("{}  {}", "-".repeat(width), "-".repeat(40));
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}

async fn postgres(url: &str, rows: &mut Vec<(String, String)>) {
    let table = format!("bench_{:08x}", rand::random::<u32>());
    let store = PostgresStore::builder(url)
        .schema("lockstore_bench")
        .table(&table)
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    let pool = store.pool().clone();

    // Latency, uncontended, next to the cheapest statement there is.
    for _ in 0..200 {
        cycle(&store, "latency").await;
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    }
    let mut cycles = Vec::with_capacity(LATENCY_SAMPLES);
    let mut selects = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let t = Instant::now();
        cycle(&store, "latency").await;
        cycles.push(t.elapsed());
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        selects.push(t.elapsed());
    }
    rows.push((
        "PG acquire+release (p50 / p99)".into(),
        format!(
            "{} / {}",
            us(percentile(&mut cycles, 0.5)),
            us(percentile(&mut cycles, 0.99))
        ),
    ));
    rows.push((
        "PG SELECT 1 (p50 / p99)".into(),
        format!(
            "{} / {}",
            us(percentile(&mut selects, 0.5)),
            us(percentile(&mut selects, 0.99))
        ),
    ));

    // Throughput, one task, sequential.
    let t = Instant::now();
    for _ in 0..CYCLES {
        cycle(&store, "throughput").await;
    }
    let ours = CYCLES as f64 / t.elapsed().as_secs_f64();
    let advisory = PgAdvisoryLock::new(format!("lockstore-bench-{table}"));
    let mut conn = pool.acquire().await.unwrap();
    let t = Instant::now();
    for _ in 0..CYCLES {
        let guard = match advisory.try_acquire(&mut *conn).await.unwrap() {
            sqlx::Either::Left(guard) => guard,
            sqlx::Either::Right(_) => panic!("advisory lock busy"),
        };
        guard.release_now().await.unwrap();
    }
    let theirs = CYCLES as f64 / t.elapsed().as_secs_f64();
    drop(conn);
    rows.push(("PG store cycles/s (1 task)".into(), format!("{ours:.0}")));
    rows.push((
        "PG PgAdvisoryLock cycles/s (1 task)".into(),
        format!("{theirs:.0}"),
    ));

    // Hand-off: a waiter blocked in `acquire`, the holder releases.
    let polling = PostgresStore::builder(url)
        .schema("lockstore_bench")
        .table(&table)
        .notifications(false)
        .build()
        .await
        .unwrap();
    for (name, waiter_store) in [("NOTIFY", store.clone()), ("polling", polling)] {
        let mut samples = Vec::with_capacity(HANDOFFS);
        for i in 0..HANDOFFS {
            let key = format!("handoff-{name}-{i}");
            let held = request(&key);
            assert!(matches!(
                store.try_acquire(&held).await.unwrap(),
                AcquireOutcome::Acquired { .. }
            ));
            let client = LockClient::new(waiter_store.clone());
            let waiter = tokio::spawn(async move {
                let options = AcquireOptions::new(Duration::from_secs(30)).wait_forever();
                let lease = client.acquire_lease(key.as_str(), options).await.unwrap();
                let at = Instant::now();
                client.release(&lease).await.unwrap();
                at
            });
            // Let the waiter fail once and settle into its wait.
            tokio::time::sleep(Duration::from_millis(50 + (i as u64 % 7) * 13)).await;
            let released_at = Instant::now();
            store.release(&held.key, held.lease_id).await.unwrap();
            let acquired_at = waiter.await.unwrap();
            samples.push(acquired_at.saturating_duration_since(released_at));
        }
        rows.push((
            format!("PG hand-off with {name} (p50 / p99)"),
            format!(
                "{} / {}",
                us(percentile(&mut samples, 0.5)),
                us(percentile(&mut samples, 0.99))
            ),
        ));
    }
    sqlx::raw_sql(&format!(
        "DROP TABLE {}; DROP SEQUENCE \"lockstore_bench\".\"{table}_fence\"",
        store.table_name()
    ))
    .execute(&pool)
    .await
    .unwrap();
}

fn sqlite_db() -> PathBuf {
    let dir = std::env::temp_dir().join("lockstore-sqlite-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("bench-{:08x}.db", rand::random::<u32>()))
}

async fn sqlite_store(db: &str, durable: bool) -> SqliteStore {
    let store = SqliteStore::builder(db)
        .durable(durable)
        .busy_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    store
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Child role: `SQLITE_CYCLES` cycles on a key of its own; prints its
/// wall-clock start and end.
fn sqlite_child(db: &str) {
    let durable = std::env::var("LOCKSTORE_BENCH_DURABLE").as_deref() == Ok("1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = sqlite_store(db, durable).await;
        let key = format!("proc-{}", std::process::id());
        cycle(&store, &key).await;
        let start = now_nanos();
        for _ in 0..SQLITE_CYCLES {
            cycle(&store, &key).await;
        }
        println!("{start} {}", now_nanos());
    });
}

async fn sqlite(rows: &mut Vec<(String, String)>) {
    for durable in [true, false] {
        let mode = if durable { "FULL" } else { "NORMAL" };
        let db = sqlite_db();
        let db = db.to_str().unwrap();
        let store = sqlite_store(db, durable).await;
        cycle(&store, "one").await;
        let t = Instant::now();
        for _ in 0..SQLITE_CYCLES {
            cycle(&store, "one").await;
        }
        let one = SQLITE_CYCLES as f64 / t.elapsed().as_secs_f64();
        rows.push((
            format!("SQLite cycles/s, 1 process (sync {mode})"),
            format!("{one:.0}"),
        ));

        let exe = std::env::current_exe().unwrap();
        let spawned: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&exe)
                    .env(CHILD_DB, db)
                    .env("LOCKSTORE_BENCH_DURABLE", if durable { "1" } else { "0" })
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for child in spawned {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            let mut parts = text.split_whitespace().map(|p| p.parse::<u128>().unwrap());
            starts.push(parts.next().unwrap());
            ends.push(parts.next().unwrap());
        }
        let span = (ends.iter().max().unwrap() - starts.iter().min().unwrap()) as f64 / 1e9;
        let four = (4 * SQLITE_CYCLES) as f64 / span;
        rows.push((
            format!("SQLite cycles/s, 4 processes (sync {mode})"),
            format!("{four:.0}"),
        ));
        let _ = std::fs::remove_file(db);
    }
}
