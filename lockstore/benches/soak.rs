//! Soak: many contended acquisitions per backend through a fenced resource,
//! counting what must never happen. Prints a table; asserts nothing.
//!
//! Sixteen clients (each its own store, so its own connections) contend for
//! eight keys. Each acquisition waits for its key, enters the critical
//! section of an in-process resource that remembers who is inside and the
//! highest fence it accepted per key, writes with its fence, and releases.
//! Counted per backend:
//!
//! * **overlaps** — a client entered a key's critical section while another
//!   was inside (two live holders);
//! * **fence inversions** — a holder's fence was not above the last one
//!   accepted for the key;
//! * **rejected live writes** — the resource refused the write of a holder
//!   whose guard still said the lease was live;
//! * **errors** — by kind (retryable backend errors are expected under
//!   load; the loop retries them).
//!
//! ```text
//! eval "$(scripts/servers.sh start)"
//! cargo bench -p lockstore --bench soak --all-features
//! SOAK_ACQUISITIONS=100000 SOAK_SECONDS=120 cargo bench -p lockstore --bench soak --all-features
//! ```
//!
//! Each backend runs until `SOAK_ACQUISITIONS` (default 1,000,000)
//! acquisitions or `SOAK_SECONDS` (default 600) have passed. SQLite always
//! runs; Redis, PostgreSQL and DynamoDB run when their
//! `LOCKSTORE_TEST_*_URL` is set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstore::{AcquireOptions, LockClient, LockError, LockStore};

const CLIENTS: usize = 16;
const KEYS: usize = 8;

/// The fenced resource: per key, who is inside and the highest fence.
struct Resource {
    inside: Vec<AtomicBool>,
    highest: Vec<Mutex<u64>>,
}

#[derive(Default)]
struct Counts {
    acquisitions: AtomicU64,
    overlaps: AtomicU64,
    inversions: AtomicU64,
    rejected_live: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn error(&self, err: &LockError) {
        let kind = match err {
            LockError::Timeout { .. } => "timeout".to_owned(),
            LockError::Backend { retryable, .. } => format!("backend (retryable: {retryable})"),
            LockError::LeaseLost { .. } => "lease lost".to_owned(),
            other => format!("{other}"),
        };
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

async fn client_loop(
    client: LockClient,
    resource: Arc<Resource>,
    counts: Arc<Counts>,
    target: u64,
    until: Instant,
    me: usize,
) {
    let options = AcquireOptions::new(Duration::from_secs(10)).wait_up_to(Duration::from_secs(30));
    let mut i = me;
    while counts.acquisitions.load(Ordering::Relaxed) < target && Instant::now() < until {
        i = (i + 1) % KEYS;
        let key = format!("soak-{i}");
        let guard = match client.acquire(key.as_str(), options).await {
            Ok(guard) => guard,
            Err(err) => {
                counts.error(&err);
                continue;
            }
        };
        counts.acquisitions.fetch_add(1, Ordering::Relaxed);
        if resource.inside[i].swap(true, Ordering::SeqCst) {
            counts.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        let fence = guard.fence().get();
        {
            let mut highest = resource.highest[i].lock().unwrap();
            if fence <= *highest {
                counts.inversions.fetch_add(1, Ordering::Relaxed);
                if !guard.is_lost() {
                    counts.rejected_live.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                *highest = fence;
            }
        }
        tokio::task::yield_now().await;
        resource.inside[i].store(false, Ordering::SeqCst);
        if let Err(err) = guard.release().await {
            counts.error(&err);
        }
    }
}

async fn soak(name: &str, stores: Vec<Arc<dyn LockStore>>, target: u64, limit: Duration) -> String {
    let resource = Arc::new(Resource {
        inside: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        highest: (0..KEYS).map(|_| Mutex::new(0)).collect(),
    });
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let until = started + limit;
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(me, store)| {
            tokio::spawn(client_loop(
                LockClient::from_arc(store),
                Arc::clone(&resource),
                Arc::clone(&counts),
                target,
                until,
                me,
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let n = counts.acquisitions.load(Ordering::Relaxed);
    let errors = counts.errors.lock().unwrap();
    let errors = if errors.is_empty() {
        "none".to_owned()
    } else {
        errors
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "| {name} | {n} | {:.0} | {:.0} | {} | {} | {} | {errors} |",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        counts.overlaps.load(Ordering::Relaxed),
        counts.inversions.load(Ordering::Relaxed),
        counts.rejected_live.load(Ordering::Relaxed),
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let target = env_u64("SOAK_ACQUISITIONS", 1_000_000);
    let limit = Duration::from_secs(env_u64("SOAK_SECONDS", 600));
    let namespace = format!("soak{:08x}", rand_suffix());
    println!(
        "soak: {CLIENTS} clients, {KEYS} keys, up to {target} acquisitions or {limit:?} per backend\n"
    );
    println!(
        "| backend | acquisitions | seconds | per second | overlaps | fence inversions | rejected live writes | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    let dir = std::env::temp_dir().join(format!("lockstore-{namespace}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("soak.db");
    let mut stores: Vec<Arc<dyn LockStore>> = Vec::new();
    for _ in 0..CLIENTS {
        let store = lockstore::sqlite::SqliteStore::builder(path.to_str().unwrap())
            .durable(false)
            .busy_timeout(Duration::from_secs(30))
            .build()
            .await
            .unwrap();
        store.ensure_schema().await.unwrap();
        stores.push(Arc::new(store));
    }
    println!("{}", soak("SQLite", stores, target, limit).await);
    let _ = std::fs::remove_dir_all(&dir);

    if let Ok(url) = std::env::var("LOCKSTORE_TEST_REDIS_URL") {
        let mut stores: Vec<Arc<dyn LockStore>> = Vec::new();
        for _ in 0..CLIENTS {
            let store = lockstore::redis::RedisStore::builder(url.clone())
                .key_prefix(format!("{namespace}:"))
                .connect()
                .await
                .unwrap();
            stores.push(Arc::new(store));
        }
        println!("{}", soak("Redis", stores, target, limit).await);
    }
    if let Ok(url) = std::env::var("LOCKSTORE_TEST_POSTGRES_URL") {
        let mut stores: Vec<Arc<dyn LockStore>> = Vec::new();
        for _ in 0..CLIENTS {
            let store = lockstore::postgres::PostgresStore::builder(url.clone())
                .table(format!("{namespace}_locks"))
                .max_connections(2)
                .build()
                .await
                .unwrap();
            store.ensure_schema().await.unwrap();
            stores.push(Arc::new(store));
        }
        println!("{}", soak("PostgreSQL", stores, target, limit).await);
    }
    if let Ok(url) = std::env::var("LOCKSTORE_TEST_DYNAMODB_URL") {
        create_soak_table(&url).await.unwrap();
        let mut stores: Vec<Arc<dyn LockStore>> = Vec::new();
        for _ in 0..CLIENTS {
            let store = lockstore::dynamodb::DynamoDbStore::builder("lockstore_soak")
                .endpoint_url(url.clone())
                .region("us-east-1")
                .static_credentials("test", "test")
                .key_prefix(namespace.clone())
                .build()
                .await
                .unwrap();
            stores.push(Arc::new(store));
        }
        println!(
            "{}",
            soak("DynamoDB (emulator)", stores, target, limit).await
        );
    }
}

async fn create_soak_table(url: &str) -> Result<(), LockError> {
    lockstore::dynamodb::DynamoDbStore::builder("lockstore_soak")
        .endpoint_url(url)
        .region("us-east-1")
        .static_credentials("test", "test")
        .build()
        .await?
        .create_table()
        .await
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0)
}
