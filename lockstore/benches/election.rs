//! Elections per backend: how fast a new leader takes over, and what idle
//! candidates cost the server. Prints one table; asserts nothing.
//!
//! * **resign → leader**: a candidate waits (settled into its backoff); the
//!   leader resigns; the time until the candidate's campaign returns.
//!   Median of the rounds.
//! * **killed → leader, past the TTL**: the leader stops renewing at once (a
//!   lease taken without a guard, as a killed process leaves it); the time
//!   from the lease's expiry until a waiting candidate leads. Median.
//! * **requests/s with N idle candidates**: a leader renewing and N
//!   candidates waiting on one election, every store call counted (the
//!   leader's renewals included) over two TTLs, after the candidates'
//!   first attempts.
//!
//! ```text
//! eval "$(scripts/servers.sh start)"
//! cargo bench -p lockstore --bench election --all-features
//! ELECTION_ROUNDS=5 ELECTION_TTL_MS=3000 cargo bench -p lockstore --bench election --all-features
//! ```
//!
//! Backends: memory and SQLite always; Redis, PostgreSQL, moto and dynalite
//! when `LOCKSTORE_TEST_{REDIS,POSTGRES,DYNAMODB,DYNALITE}_URL` is set (the
//! table says which were not run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lockstore::{
    AcquireOutcome, AcquireRequest, Holder, LeaseId, LockClient, LockError, LockKey, LockStore,
    OwnerLabel, ReleaseOutcome, ReleaseSignal, RenewOutcome, Ttl,
};
use tokio::time::{Instant, sleep};

/// Every call to the wrapped store, counted.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn LockStore>,
    calls: AtomicU64,
}

impl Counted {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl LockStore for Counted {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        self.count();
        self.inner.try_acquire(request).await
    }
    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.count();
        self.inner.renew(key, id, ttl).await
    }
    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.count();
        self.inner.release(key, id).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        self.count();
        self.inner.inspect(key).await
    }
    fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.inner.release_signal(key)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn candidate(store: &Arc<dyn LockStore>, name: &str) -> LockClient {
    LockClient::from_arc(Arc::clone(store)).with_owner(OwnerLabel::new(name).unwrap())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn resign_handover(store: &Arc<dyn LockStore>, election: &str, ttl: Duration) -> Duration {
    let leader = candidate(store, "leader").election(election, ttl).unwrap();
    let waiter = candidate(store, "waiter").election(election, ttl).unwrap();
    let leadership = leader.campaign("l").await.unwrap();
    let waiting = tokio::spawn(async move {
        let won = waiter.campaign("w").await.unwrap();
        let at = Instant::now();
        won.resign().await.unwrap();
        at
    });
    // Settled into its backoff.
    sleep(ttl / 4).await;
    let resigned = Instant::now();
    leadership.resign().await.unwrap();
    waiting.await.unwrap() - resigned
}

async fn killed_handover(store: &Arc<dyn LockStore>, election: &str, ttl: Duration) -> Duration {
    let key = LockKey::new(election).unwrap();
    let request = AcquireRequest {
        key,
        lease_id: LeaseId::random(),
        ttl: Ttl::new(ttl).unwrap(),
        owner: OwnerLabel::new("killed\u{1f}k").unwrap(),
    };
    let sent = Instant::now();
    assert!(matches!(
        store.try_acquire(&request).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    let waiter = candidate(store, "waiter").election(election, ttl).unwrap();
    let won = waiter.campaign("w").await.unwrap();
    let elected = Instant::now();
    won.resign().await.unwrap();
    // The lease ended no earlier than `sent + ttl` on the server.
    elected.saturating_duration_since(sent + ttl)
}

async fn idle_rate(counted: &Arc<Counted>, election: &str, ttl: Duration, idle: usize) -> f64 {
    let store: Arc<dyn LockStore> = Arc::clone(counted) as Arc<dyn LockStore>;
    let leadership = candidate(&store, "leader")
        .election(election, ttl)
        .unwrap()
        .campaign("l")
        .await
        .unwrap();
    let candidates: Vec<_> = (0..idle)
        .map(|n| {
            let election = candidate(&store, &format!("idle-{n}"))
                .election(election, ttl)
                .unwrap();
            tokio::spawn(async move { election.campaign("i").await })
        })
        .collect();
    // Past the first attempts and the first, short backoff steps.
    sleep(ttl / 2).await;
    let before = counted.calls.load(Ordering::Relaxed);
    let window = ttl * 2;
    sleep(window).await;
    let calls = counted.calls.load(Ordering::Relaxed) - before;
    for candidate in candidates {
        candidate.abort();
    }
    leadership.resign().await.unwrap();
    calls as f64 / window.as_secs_f64()
}

async fn row(name: &str, store: Arc<dyn LockStore>, rounds: usize, ttl: Duration) -> String {
    let tag = format!("{:x}", rand_suffix());
    let mut resign = Vec::new();
    let mut killed = Vec::new();
    for round in 0..rounds {
        resign.push(resign_handover(&store, &format!("bench/resign/{tag}/{round}"), ttl).await);
        killed.push(killed_handover(&store, &format!("bench/killed/{tag}/{round}"), ttl).await);
    }
    let counted = Arc::new(Counted {
        inner: Arc::clone(&store),
        calls: AtomicU64::new(0),
    });
    let mut rates = Vec::new();
    for idle in [1, 8, 64] {
        rates.push(idle_rate(&counted, &format!("bench/idle/{tag}/{idle}"), ttl, idle).await);
    }
    format!(
        "| {name} | {} | {} | {:.1} | {:.1} | {:.1} |",
        ms(median(resign)),
        ms(median(killed)),
        rates[0],
        rates[1],
        rates[2]
    )
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0)
}

async fn dynamodb(url: &str, namespace: &str) -> Arc<dyn LockStore> {
    let build = || {
        lockstore::dynamodb::DynamoDbStore::builder("lockstore_election_bench")
            .endpoint_url(url)
            .region("us-east-1")
            .static_credentials("test", "test")
            .key_prefix(namespace.to_owned())
    };
    build().build().await.unwrap().create_table().await.unwrap();
    Arc::new(build().build().await.unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = usize::try_from(env_u64("ELECTION_ROUNDS", 3))
        .unwrap_or(3)
        .max(1);
    let ttl = Duration::from_millis(env_u64("ELECTION_TTL_MS", 2000).max(30));
    let namespace = format!("elect{:08x}", rand_suffix());
    println!(
        "elections: TTL {ttl:?} (candidates back off up to a third of it), {rounds} rounds; \
         requests/s counts every store call (leader's renewals included) over two TTLs\n"
    );
    println!(
        "| backend | resign → new leader (p50) | killed → new leader, past the TTL (p50) | req/s, 1 idle candidate | 8 idle | 64 idle |"
    );
    println!("|---|---|---|---|---|---|");
    let mut skipped = Vec::new();

    let memory: Arc<dyn LockStore> = Arc::new(lockstore::memory::MemoryStore::new());
    println!("{}", row("memory", memory, rounds, ttl).await);

    let dir = std::env::temp_dir().join(format!("lockstore-{namespace}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = lockstore::sqlite::SqliteStore::builder(dir.join("election.db").to_str().unwrap())
        .durable(false)
        .build()
        .await
        .unwrap();
    sqlite.ensure_schema().await.unwrap();
    println!("{}", row("SQLite", Arc::new(sqlite), rounds, ttl).await);
    let _ = std::fs::remove_dir_all(&dir);

    match std::env::var("LOCKSTORE_TEST_REDIS_URL") {
        Ok(url) => {
            let store = lockstore::redis::RedisStore::builder(url)
                .key_prefix(format!("{namespace}:"))
                .connect()
                .await
                .unwrap();
            println!("{}", row("Redis", Arc::new(store), rounds, ttl).await);
        }
        Err(_) => skipped.push("Redis (LOCKSTORE_TEST_REDIS_URL unset)"),
    }
    match std::env::var("LOCKSTORE_TEST_POSTGRES_URL") {
        Ok(url) => {
            let store = lockstore::postgres::PostgresStore::builder(url)
                .table(format!("{namespace}_locks"))
                .build()
                .await
                .unwrap();
            store.ensure_schema().await.unwrap();
            println!("{}", row("PostgreSQL", Arc::new(store), rounds, ttl).await);
        }
        Err(_) => skipped.push("PostgreSQL (LOCKSTORE_TEST_POSTGRES_URL unset)"),
    }
    for (name, variable) in [
        ("DynamoDB (moto)", "LOCKSTORE_TEST_DYNAMODB_URL"),
        ("DynamoDB (dynalite)", "LOCKSTORE_TEST_DYNALITE_URL"),
    ] {
        match std::env::var(variable) {
            Ok(url) => {
                let store = dynamodb(&url, &namespace).await;
                println!("{}", row(name, store, rounds, ttl).await);
            }
            Err(_) => skipped.push(variable),
        }
    }
    if !skipped.is_empty() {
        println!("\nnot run: {}", skipped.join(", "));
    }
}
