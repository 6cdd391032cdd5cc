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
//! The first row is a self-check: the memory store behind a decorator that
//! breaks the contract on purpose (every 50th acquire is granted even when
//! the key is held, with a fence below the holder's; every 500th fails with
//! a permanent error). Its overlaps, inversions, rejected live writes and
//! errors must all be above zero; if any is zero, the counting is broken and
//! the program says so (and exits non-zero) before soaking the real backends.
//!
//! ```text
//! eval "$(scripts/servers.sh start)"
//! cargo bench -p lockstore --bench soak --all-features
//! SOAK_ACQUISITIONS=100000 SOAK_EMULATOR_SECONDS=60 cargo bench -p lockstore --bench soak --all-features
//! ```
//!
//! Knobs (environment):
//!
//! * `SOAK_ACQUISITIONS` (default 1,000,000): acquisitions per server
//!   backend (SQLite, Redis, PostgreSQL) and the most per emulator;
//! * `SOAK_SECONDS` (default 3600): a server backend stops there even short
//!   of its target (the row then says so) — a guard against a stuck run, not
//!   a time budget;
//! * `SOAK_EMULATOR_SECONDS` (default 600): how long each DynamoDB emulator
//!   (moto, dynalite) runs — they serve a few hundred requests a second, so
//!   they run for time, not to a count;
//! * `SOAK_ONLY`: a comma-separated subset of `sqlite,redis,postgres,moto,dynalite`.
//!
//! SQLite always runs; Redis, PostgreSQL, moto and dynalite run when their
//! `LOCKSTORE_TEST_REDIS_URL`, `LOCKSTORE_TEST_POSTGRES_URL`,
//! `LOCKSTORE_TEST_DYNAMODB_URL`, `LOCKSTORE_TEST_DYNALITE_URL` is set, and
//! the table says which were skipped for want of one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstore::{
    AcquireOptions, AcquireOutcome, AcquireRequest, FencingToken, LeaseId, LockClient, LockError,
    LockKey, LockStore, ReleaseOutcome, RenewOutcome, Ttl,
};

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
    hold: Duration,
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
        if hold.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(hold).await;
        }
        resource.inside[i].store(false, Ordering::SeqCst);
        if let Err(err) = guard.release().await {
            counts.error(&err);
        }
    }
}

/// What one backend's soak counted.
struct Row {
    acquisitions: u64,
    overlaps: u64,
    inversions: u64,
    rejected_live: u64,
    errors: u64,
    line: String,
}

/// Soaks `stores` (one per client) until `target` acquisitions or `limit`,
/// holding each critical section for `hold` (zero: one yield).
async fn soak(
    name: &str,
    stores: Vec<Arc<dyn LockStore>>,
    target: u64,
    limit: Duration,
    hold: Duration,
) -> Row {
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
                hold,
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let n = counts.acquisitions.load(Ordering::Relaxed);
    let errors = counts.errors.lock().unwrap();
    let error_count = errors.values().sum();
    let error_text = if errors.is_empty() {
        "none".to_owned()
    } else {
        errors
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let short = if n < target {
        format!(" (stopped at the time limit, short of {target})")
    } else {
        String::new()
    };
    let row = Row {
        acquisitions: n,
        overlaps: counts.overlaps.load(Ordering::Relaxed),
        inversions: counts.inversions.load(Ordering::Relaxed),
        rejected_live: counts.rejected_live.load(Ordering::Relaxed),
        errors: error_count,
        line: String::new(),
    };
    Row {
        line: format!(
            "| {name} | {n}{short} | {:.0} | {:.0} | {} | {} | {} | {error_text} |",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            row.overlaps,
            row.inversions,
            row.rejected_live,
        ),
        ..row
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The memory store, broken on purpose for the self-check: every 50th
/// acquire of a held key is granted anyway, with a fence below the holder's
/// (two holders, an inverted fence, a live guard whose write the resource
/// refuses), and every 500th acquire fails with a permanent error.
#[derive(Debug)]
struct BrokenStore {
    inner: lockstore::memory::MemoryStore,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl LockStore for BrokenStore {
    fn backend_name(&self) -> &'static str {
        "broken-memory"
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if call.is_multiple_of(500) {
            // Permanent, so the client reports it instead of retrying.
            return Err(LockError::permanent(
                "broken-memory",
                "an injected error",
                lockstore::UnexpectedReply("self-check".into()),
            ));
        }
        match self.inner.try_acquire(request).await? {
            AcquireOutcome::Held(holder) if call.is_multiple_of(50) => {
                Ok(AcquireOutcome::Acquired {
                    fence: FencingToken::new(holder.fence().get().saturating_sub(1).max(1)),
                })
            }
            outcome => Ok(outcome),
        }
    }

    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        self.inner.renew(key, lease_id, ttl).await
    }

    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.inner.release(key, lease_id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<lockstore::Holder>, LockError> {
        self.inner.inspect(key).await
    }
}

/// Whether `backend` is selected by `SOAK_ONLY` (all are by default).
fn selected(backend: &str) -> bool {
    match std::env::var("SOAK_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|b| b.trim() == backend),
        _ => true,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let target = env_u64("SOAK_ACQUISITIONS", 1_000_000);
    let limit = Duration::from_secs(env_u64("SOAK_SECONDS", 3600));
    let emulator_limit = Duration::from_secs(env_u64("SOAK_EMULATOR_SECONDS", 600));
    let namespace = format!("soak{:08x}", rand_suffix());
    println!(
        "soak: {CLIENTS} clients, {KEYS} keys; {target} acquisitions per server backend \
         (at most {limit:?}), {emulator_limit:?} per DynamoDB emulator\n"
    );
    println!(
        "| backend | acquisitions | seconds | per second | overlaps | fence inversions | rejected live writes | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    let broken = Arc::new(BrokenStore {
        inner: lockstore::memory::MemoryStore::new(),
        calls: AtomicU64::new(0),
    });
    let stores: Vec<Arc<dyn LockStore>> = (0..CLIENTS)
        .map(|_| Arc::clone(&broken) as Arc<dyn LockStore>)
        .collect();
    let check = soak(
        "self-check: memory, broken on purpose",
        stores,
        20_000,
        Duration::from_secs(300),
        Duration::from_millis(1),
    )
    .await;
    println!("{}", check.line);
    let missed: Vec<&str> = [
        ("overlaps", check.overlaps),
        ("fence inversions", check.inversions),
        ("rejected live writes", check.rejected_live),
        ("errors", check.errors),
    ]
    .into_iter()
    .filter(|(_, n)| *n == 0)
    .map(|(what, _)| what)
    .collect();
    if !missed.is_empty() || check.acquisitions == 0 {
        eprintln!(
            "soak: the self-check's broken store did not move {missed:?}: the counting is broken, \
             so the rows below would prove nothing"
        );
        std::process::exit(1);
    }
    let mut skipped = Vec::new();
    let namespace = &namespace;

    if selected("sqlite") {
        let dir = std::env::temp_dir().join(format!("lockstore-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("soak.db");
        let path = path.to_str().unwrap();
        let stores = clients(|| async move {
            let store = lockstore::sqlite::SqliteStore::builder(path)
                .durable(false)
                .busy_timeout(Duration::from_secs(30))
                .build()
                .await
                .unwrap();
            store.ensure_schema().await.unwrap();
            store
        })
        .await;
        println!(
            "{}",
            soak("SQLite", stores, target, limit, Duration::ZERO)
                .await
                .line
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    match std::env::var("LOCKSTORE_TEST_REDIS_URL") {
        Ok(url) if selected("redis") => {
            let url = &url;
            let stores = clients(|| async move {
                lockstore::redis::RedisStore::builder(url.clone())
                    .key_prefix(format!("{namespace}:"))
                    .connect()
                    .await
                    .unwrap()
            })
            .await;
            println!(
                "{}",
                soak("Redis", stores, target, limit, Duration::ZERO)
                    .await
                    .line
            );
        }
        Ok(_) => {}
        Err(_) => skipped.push("Redis (LOCKSTORE_TEST_REDIS_URL unset)".to_owned()),
    }
    match std::env::var("LOCKSTORE_TEST_POSTGRES_URL") {
        Ok(url) if selected("postgres") => {
            let url = &url;
            let stores = clients(|| async move {
                let store = lockstore::postgres::PostgresStore::builder(url.clone())
                    .table(format!("{namespace}_locks"))
                    .max_connections(2)
                    .build()
                    .await
                    .unwrap();
                store.ensure_schema().await.unwrap();
                store
            })
            .await;
            println!(
                "{}",
                soak("PostgreSQL", stores, target, limit, Duration::ZERO)
                    .await
                    .line
            );
        }
        Ok(_) => {}
        Err(_) => skipped.push("PostgreSQL (LOCKSTORE_TEST_POSTGRES_URL unset)".to_owned()),
    }
    for (name, selector, variable) in [
        ("DynamoDB (moto)", "moto", "LOCKSTORE_TEST_DYNAMODB_URL"),
        (
            "DynamoDB (dynalite)",
            "dynalite",
            "LOCKSTORE_TEST_DYNALITE_URL",
        ),
    ] {
        match std::env::var(variable) {
            Ok(url) if selected(selector) => {
                create_soak_table(&url).await.unwrap();
                let url = &url;
                let stores = clients(|| async move {
                    lockstore::dynamodb::DynamoDbStore::builder("lockstore_soak")
                        .endpoint_url(url.clone())
                        .region("us-east-1")
                        .static_credentials("test", "test")
                        .key_prefix(namespace.clone())
                        .build()
                        .await
                        .unwrap()
                })
                .await;
                let row = soak(name, stores, target, emulator_limit, Duration::ZERO).await;
                // An emulator's row is meant to stop at the time limit.
                let short = format!(" (stopped at the time limit, short of {target})");
                println!("{}", row.line.replace(&short, ""));
            }
            Ok(_) => {}
            Err(_) => skipped.push(format!("{name} ({variable} unset)")),
        }
    }
    if !skipped.is_empty() {
        println!("\nnot run: {}", skipped.join(", "));
    }
}

/// One store per soak client, each with connections of its own, as
/// separate processes would have.
async fn clients<S, Fut>(connect: impl Fn() -> Fut) -> Vec<Arc<dyn LockStore>>
where
    S: LockStore,
    Fut: std::future::Future<Output = S>,
{
    let mut stores: Vec<Arc<dyn LockStore>> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        stores.push(Arc::new(connect().await));
    }
    stores
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
