//! Redis backend figures on one local server, printed as a table:
//!
//! * uncontended acquire+release latency next to the `PING` round trip;
//! * acquire+release cycles/s next to a hand-written `SET NX PX` + Lua
//!   compare-and-delete and next to `rslock` (Redlock on one instance);
//! * hand-off latency (release → waiter holds) with pub/sub notification and
//!   with polling only.
//!
//! Run with `cargo bench -p lockstore-redis` and a server in
//! `LOCKSTORE_TEST_REDIS_URL` (or `scripts/servers.sh run cargo bench …`).

use std::time::Duration;

use lockstore_api::{
    AcquireOptions, AcquireOutcome, AcquireRequest, LeaseId, LockClient, LockKey, LockStore,
    OwnerLabel, Ttl,
};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_redis::RedisStore;
use tokio::time::Instant;

const LATENCY_SAMPLES: usize = 5_000;
const THROUGHPUT_CYCLES: usize = 5_000;
const HANDOFF_SAMPLES: usize = 30;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let url = server_url(Service::Redis);
    let prefix = format!("lockstore-bench:{:08x}:", rand::random::<u32>());
    let store = RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .expect("connect");
    let mut rows: Vec<(String, String)> = Vec::new();

    // Latency: PING versus one acquire + one release, sequential.
    let mut manager = store.connection();
    let ping = sample(LATENCY_SAMPLES, || {
        let mut manager = manager.clone();
        async move {
            let _: String = redis::cmd("PING")
                .query_async(&mut manager)
                .await
                .expect("PING");
        }
    })
    .await;
    let key = LockKey::new("latency").unwrap();
    let cycle = sample(LATENCY_SAMPLES, || {
        let store = store.clone();
        let key = key.clone();
        async move { acquire_release(&store, &key).await }
    })
    .await;
    rows.push((
        "PING round trip p50 / p99".into(),
        format!("{} / {}", us(pct(&ping, 50)), us(pct(&ping, 99))),
    ));
    rows.push((
        "lockstore acquire+release p50 / p99".into(),
        format!("{} / {}", us(pct(&cycle, 50)), us(pct(&cycle, 99))),
    ));

    // Throughput: sequential cycles on one key, one client each.
    let started = Instant::now();
    for _ in 0..THROUGHPUT_CYCLES {
        acquire_release(&store, &key).await;
    }
    rows.push(("lockstore cycles/s".into(), rate(started.elapsed())));

    let started = Instant::now();
    let cad = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    );
    let baseline_key = format!("{prefix}baseline");
    for _ in 0..THROUGHPUT_CYCLES {
        let token = LeaseId::random().to_string();
        let set: Option<String> = redis::cmd("SET")
            .arg(&baseline_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut manager)
            .await
            .expect("SET NX PX");
        assert!(set.is_some(), "baseline key was held");
        let deleted: i64 = cad
            .key(&baseline_key)
            .arg(&token)
            .invoke_async(&mut manager)
            .await
            .expect("CAD");
        assert_eq!(deleted, 1);
    }
    rows.push((
        "SET NX PX + Lua delete cycles/s".into(),
        rate(started.elapsed()),
    ));

    let rslock = rslock::LockManager::new(vec![url.clone()]);
    let rslock_key = format!("{prefix}rslock");
    // Warm up its connection.
    let lock = rslock
        .lock(rslock_key.as_str(), Duration::from_secs(30))
        .await
        .expect("rslock lock");
    rslock.unlock(&lock).await;
    let started = Instant::now();
    for _ in 0..THROUGHPUT_CYCLES {
        let lock = rslock
            .lock(rslock_key.as_str(), Duration::from_secs(30))
            .await
            .expect("rslock lock");
        rslock.unlock(&lock).await;
    }
    rows.push((
        "rslock (1 instance) cycles/s".into(),
        rate(started.elapsed()),
    ));

    // Hand-off: one waiter blocked, the holder releases, time until the waiter holds.
    let polling = RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .notifications(false)
        .connect()
        .await
        .expect("connect");
    let notified = handoff(&store, &store).await;
    let polled = handoff(&store, &polling).await;
    rows.push((
        "hand-off with notification p50 / p99".into(),
        format!("{} / {}", us(pct(&notified, 50)), us(pct(&notified, 99))),
    ));
    rows.push((
        "hand-off polling only p50 / p99".into(),
        format!("{} / {}", us(pct(&polled, 50)), us(pct(&polled, 99))),
    ));

    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!(
        "\nlockstore-redis bench ({LATENCY_SAMPLES} latency samples, {THROUGHPUT_CYCLES} cycles, {HANDOFF_SAMPLES} hand-offs)\n"
    );
    println!("| {:width$} | {:>21} |", "measure", "value");
    println!("|-{:-<width$}-|-{:->21}-|", "", "");
    for (name, value) in rows {
        println!("| {name:width$} | {value:>21} |");
    }
}

async fn acquire_release(store: &RedisStore, key: &LockKey) {
    let request = AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::from_millis(30_000).unwrap(),
        owner: OwnerLabel::new("bench").unwrap(),
    };
    match store.try_acquire(&request).await.expect("acquire") {
        AcquireOutcome::Acquired { .. } => {}
        AcquireOutcome::Held(holder) => panic!("uncontended key held by {holder:?}"),
    }
    store.release(key, request.lease_id).await.expect("release");
}

/// Release → waiter holds, `HANDOFF_SAMPLES` times; the waiter uses the
/// client's default backoff and has waited 100 ms when the release comes.
async fn handoff(holder_store: &RedisStore, waiter_store: &RedisStore) -> Vec<Duration> {
    let holder = LockClient::new(holder_store.clone());
    let waiter = LockClient::new(waiter_store.clone());
    let ttl = Duration::from_secs(30);
    let mut samples = Vec::new();
    for _ in 0..HANDOFF_SAMPLES {
        let held = holder
            .acquire_lease("handoff", AcquireOptions::new(ttl))
            .await
            .expect("holder");
        let waiter = waiter.clone();
        let waiting = tokio::spawn(async move {
            let lease = waiter
                .acquire_lease("handoff", AcquireOptions::new(ttl).wait_forever())
                .await
                .expect("waiter");
            (lease, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = Instant::now();
        holder.release(&held).await.expect("release");
        let (lease, acquired) = waiting.await.expect("waiter task");
        samples.push(acquired - released);
        holder.release(&lease).await.expect("release waiter");
    }
    samples
}

async fn sample<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples
}

fn pct(samples: &[Duration], percentile: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) * percentile) / 100]
}

fn us(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn rate(elapsed: Duration) -> String {
    format!("{:.0}/s", THROUGHPUT_CYCLES as f64 / elapsed.as_secs_f64())
}
