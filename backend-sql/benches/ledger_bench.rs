//! The execution ledger next to the lock, on the same server, in one run:
//! begin+succeed cycles against acquire+release cycles, interleaved over
//! several rounds so a noisy machine affects both alike. Prints a table;
//! asserts nothing about speed.
//!
//! `LOCKSTORE_TEST_POSTGRES_URL=postgres://… cargo bench -p lockstore-sql --bench ledger_bench`

use std::time::{Duration, Instant};

use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, Finish, FinishOutcome, FinishRequest, LedgerStore,
};
use lockstore_api::{AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, Ttl};
use lockstore_sql::{PostgresStore, SqliteStore};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 400;

fn key(prefix: &str, i: usize) -> LockKey {
    LockKey::new(format!("{prefix}-{i}")).unwrap()
}

async fn lock_cycle(store: &dyn LockStore, key: LockKey) {
    let request = AcquireRequest {
        key,
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("bench").unwrap(),
    };
    assert!(matches!(
        store.try_acquire(&request).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    store.release(&request.key, request.lease_id).await.unwrap();
}

async fn run_cycle(store: &dyn LedgerStore, key: LockKey) {
    let request = BeginRequest {
        key,
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("bench").unwrap(),
        max_attempts: 3,
        request_hash: None,
    };
    assert!(matches!(
        store.begin(&request).await.unwrap(),
        BeginOutcome::Started { .. }
    ));
    let finished = store
        .finish(&FinishRequest {
            key: request.key.clone(),
            lease_id: request.lease_id,
            finish: Finish::Succeeded {
                result: Some(b"{\"rows\":42}".to_vec()),
            },
        })
        .await
        .unwrap();
    assert!(matches!(finished, FinishOutcome::Finished(_)));
}

async fn replay(store: &dyn LedgerStore, key: LockKey) {
    let request = BeginRequest {
        key,
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("bench").unwrap(),
        max_attempts: 3,
        request_hash: None,
    };
    assert!(matches!(
        store.begin(&request).await.unwrap(),
        BeginOutcome::Existing(_)
    ));
}

#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    total: Duration,
}

impl Series {
    fn row(&mut self, name: &str) -> String {
        self.samples.sort();
        let p = |q: f64| self.samples[((self.samples.len() - 1) as f64 * q).round() as usize];
        format!(
            "| {name:<38} | {:>9.0} | {:>8.0} µs | {:>8.0} µs |",
            self.samples.len() as f64 / self.total.as_secs_f64(),
            p(0.5).as_secs_f64() * 1e6,
            p(0.99).as_secs_f64() * 1e6
        )
    }
}

async fn compare<S: LockStore + LedgerStore>(label: &str, store: &S) {
    let tag = format!("{:x}", rand::random::<u32>());
    let (mut locks, mut runs, mut replays) =
        (Series::default(), Series::default(), Series::default());
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let n = round * PER_ROUND + i;
            let started = Instant::now();
            lock_cycle(store, key(&format!("l{tag}"), n)).await;
            let lock = started.elapsed();
            let started = Instant::now();
            run_cycle(store, key(&format!("r{tag}"), n)).await;
            let run = started.elapsed();
            let started = Instant::now();
            replay(store, key(&format!("r{tag}"), n)).await;
            let dup = started.elapsed();
            for (series, d) in [(&mut locks, lock), (&mut runs, run), (&mut replays, dup)] {
                series.samples.push(d);
                series.total += d;
            }
        }
    }
    println!("\n{label}: {ROUNDS} rounds × {PER_ROUND}, interleaved\n");
    println!(
        "| {:<38} | {:>9} | {:>11} | {:>11} |",
        "cycle", "cycles/s", "p50", "p99"
    );
    println!("|{:-<40}|{:-<11}|{:-<13}|{:-<13}|", "", "", "", "");
    println!("{}", locks.row("lock: acquire + release (2 requests)"));
    println!("{}", runs.row("ledger: begin + succeed (2 requests)"));
    println!("{}", replays.row("ledger: duplicate begin → result (1)"));
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("lockstore-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteStore::open(&dir.join("bench.db").to_string_lossy())
        .await
        .unwrap();
    sqlite.ensure_schema().await.unwrap();
    compare("SQLite (durable, one process)", &sqlite).await;
    match std::env::var("LOCKSTORE_TEST_POSTGRES_URL") {
        Ok(url) => {
            let pg = PostgresStore::builder(url)
                .table(format!("bench_{:x}", rand::random::<u32>()))
                .build()
                .await
                .unwrap();
            pg.ensure_schema().await.unwrap();
            compare("PostgreSQL", &pg).await;
        }
        Err(_) => println!("\n(PostgreSQL skipped: set LOCKSTORE_TEST_POSTGRES_URL)"),
    }
    let _ = std::fs::remove_dir_all(dir);
}
