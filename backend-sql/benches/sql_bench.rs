//! Figures for the SQLite store, printed as a table (PostgreSQL has its own
//! bench, `postgres_bench`).
//!
//! `cargo bench -p lockstore-sql --bench sql_bench`
//!
//! * SQLite cycles/s with 1 and 4 processes on one file (this binary re-run
//!   as children), with `synchronous = FULL` and `NORMAL`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_sql::SqliteStore;

const CHILD_DB: &str = "LOCKSTORE_BENCH_SQLITE_CHILD";
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
