//! Ledger throughput on one local server, printed as a table: begin+succeed
//! cycles/s (each on a fresh key, as run-once work is) next to the lock's
//! acquire+release cycles/s, measured in interleaved rounds so both see the
//! same machine load. No assertions on the figures.
//!
//! Run with `cargo bench -p lockstore-redis --bench ledger_bench` and a
//! server in `LOCKSTORE_TEST_REDIS_URL`.

use std::time::Duration;

use lockstore_api::ledger::{BeginOutcome, BeginRequest, Finish, FinishRequest, LedgerStore};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, ReleaseOutcome, Ttl,
};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_redis::RedisStore;
use tokio::time::Instant;

const ROUNDS: usize = 5;
const CYCLES: usize = 2_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let store = RedisStore::builder(server_url(Service::Redis))
        .key_prefix(format!("lockstore-bench:{:08x}:", rand::random::<u32>()))
        .connect()
        .await
        .expect("connect");
    let owner = OwnerLabel::new("bench").unwrap();
    let ttl = Ttl::from_millis(30_000).unwrap();
    let lock_key = LockKey::new("lock").unwrap();
    let mut lock_rates = Vec::new();
    let mut run_rates = Vec::new();
    let mut next_run = 0u64;
    // One warm-up cycle of each, so script loading is not measured.
    lock_cycle(&store, &lock_key, &owner, ttl).await;
    run_cycle(&store, &LockKey::new("warm").unwrap(), &owner, ttl).await;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CYCLES {
            lock_cycle(&store, &lock_key, &owner, ttl).await;
        }
        lock_rates.push(rate(started.elapsed()));
        let started = Instant::now();
        for _ in 0..CYCLES {
            next_run += 1;
            let key = LockKey::new(format!("run-{next_run}")).unwrap();
            run_cycle(&store, &key, &owner, ttl).await;
        }
        run_rates.push(rate(started.elapsed()));
    }
    let purged = store.purge(Duration::ZERO).await.expect("purge");
    println!("| round | lock acquire+release /s | ledger begin+succeed /s |");
    println!("|-------|-------------------------|-------------------------|");
    for (round, (lock, run)) in lock_rates.iter().zip(&run_rates).enumerate() {
        println!("| {:>5} | {lock:>23.0} | {run:>23.0} |", round + 1);
    }
    println!(
        "| median| {:>23.0} | {:>23.0} |",
        median(&mut lock_rates),
        median(&mut run_rates)
    );
    println!("({CYCLES} cycles per round, sequential, one connection; {purged} records purged)");
}

async fn lock_cycle(store: &RedisStore, key: &LockKey, owner: &OwnerLabel, ttl: Ttl) {
    let request = AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl,
        owner: owner.clone(),
    };
    let outcome = store.try_acquire(&request).await.expect("acquire");
    assert!(matches!(outcome, AcquireOutcome::Acquired { .. }));
    let released = store.release(key, request.lease_id).await.expect("release");
    assert_eq!(released, ReleaseOutcome::Released);
}

async fn run_cycle(store: &RedisStore, key: &LockKey, owner: &OwnerLabel, ttl: Ttl) {
    let request = BeginRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl,
        owner: owner.clone(),
        max_attempts: 1,
        request_hash: None,
    };
    let outcome = store.begin(&request).await.expect("begin");
    assert!(matches!(outcome, BeginOutcome::Started { .. }));
    store
        .finish(&FinishRequest {
            key: key.clone(),
            lease_id: request.lease_id,
            finish: Finish::Succeeded {
                result: Some(b"ok".to_vec()),
            },
        })
        .await
        .expect("finish");
}

fn rate(elapsed: Duration) -> f64 {
    CYCLES as f64 / elapsed.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
