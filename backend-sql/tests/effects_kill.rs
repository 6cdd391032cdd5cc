//! Exactly-once effects under SIGKILL, on SQLite and PostgreSQL: worker
//! processes write each key's effect row and record the run's success in
//! one transaction (`succeed_in`), and are killed mid-run — after the
//! effect and before the finish, between the finish and the commit, and at
//! random moments. At the end every key's effect row exists exactly once,
//! with the fence of the run the ledger recorded as succeeded.
//!
//! Modelled on `ledger_kill.rs`: the test binary is its own worker
//! (`--worker`). Eight workers run 200 keys. The first run of every tenth
//! key that gets there writes a marker file at its kill point and hangs
//! (its transaction open) until the parent SIGKILLs its process; the
//! parent also kills a worker at random moments. The marker kills do not
//! depend on timing; the random ones land wherever they land.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use lockstore_api::LockError;
use lockstore_api::ledger::{Begin, Ledger, LedgerStore, RunOptions, RunStatus};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_sql::{PostgresStore, SqliteStore};

const WORKERS: usize = 8;
const KEYS: usize = 200;
/// Keys whose first run hangs after its effect, before its finish.
const BEFORE_FINISH: usize = 3;
/// Keys whose first run hangs after its finish, before its commit.
const BEFORE_COMMIT: usize = 7;
/// Of every `EVERY` keys, one of each kind.
const EVERY: usize = 10;
/// Kills at random moments, besides the marked ones.
const RANDOM_KILLS: usize = 12;
/// Short, so that a killed run is taken over quickly; renewed at a third.
const RUN_TTL: Duration = Duration::from_secs(2);

fn key(i: usize) -> String {
    format!("fx-{i:03}")
}

const POSTGRES_URL_VAR: &str = "EFFECTS_KILL_POSTGRES_URL";
const SCHEMA: &str = "lockstore_conformance";

fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| server_url(Service::Postgres))
}

/// The ledger's store with the effect table beside it, in one database.
#[derive(Clone)]
enum Db {
    Sqlite(SqliteStore),
    Postgres(PostgresStore, String),
}

/// Where the processes meet: `sqlite:<path>` or `postgres:<namespace>`,
/// and the marker directory.
struct Setup {
    store: String,
    markers: PathBuf,
}

impl Setup {
    fn from_env() -> Self {
        Self {
            store: std::env::var("EFFECTS_KILL_STORE").expect("EFFECTS_KILL_STORE"),
            markers: std::env::var("EFFECTS_KILL_MARKERS")
                .expect("EFFECTS_KILL_MARKERS")
                .into(),
        }
    }

    async fn db(&self) -> Db {
        if let Some(path) = self.store.strip_prefix("sqlite:") {
            let store = SqliteStore::builder(path)
                .durable(false)
                .busy_timeout(Duration::from_secs(30))
                .build()
                .await
                .expect("open the SQLite ledger");
            store.ensure_schema().await.expect("ensure_schema");
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS effects (key TEXT NOT NULL, fence INTEGER NOT NULL)",
            )
            .execute(store.pool())
            .await
            .expect("the effect table");
            Db::Sqlite(store)
        } else if let Some(namespace) = self.store.strip_prefix("postgres:") {
            let store = PostgresStore::builder(postgres_url())
                .schema(SCHEMA)
                .table(format!("locks_{namespace}"))
                .max_connections(3)
                .build()
                .await
                .expect("connect the PostgreSQL ledger");
            store.ensure_schema().await.expect("ensure_schema");
            let effects = format!("\"{SCHEMA}\".\"effects_{namespace}\"");
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {effects} (key text NOT NULL, fence bigint NOT NULL)"
            ))
            .execute(store.pool())
            .await
            .expect("the effect table");
            Db::Postgres(store, effects)
        } else {
            panic!("unknown store {}", self.store)
        }
    }

    fn spawn_worker(&self) -> Child {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        if self.store.starts_with("postgres:") {
            command.env(POSTGRES_URL_VAR, postgres_url());
        }
        command
            .arg("--worker")
            .env("EFFECTS_KILL_STORE", &self.store)
            .env("EFFECTS_KILL_MARKERS", &self.markers)
            .spawn()
            .expect("start a worker process")
    }

    /// The first run of a marked key to get to its kill point claims it
    /// (exactly one run in all processes does), tells the parent, and
    /// hangs, its transaction open, until it is killed.
    async fn hang_if_marked(&self, i: usize, point: usize) {
        if i % EVERY != point {
            return;
        }
        let key = key(i);
        if std::fs::File::create_new(self.markers.join(format!("claimed-{key}"))).is_ok() {
            let marker = self
                .markers
                .join(format!("{}-{point}-{key}", std::process::id()));
            std::fs::write(&marker, b"").expect("write the marker");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

impl Db {
    fn ledger(&self) -> Ledger {
        match self {
            Db::Sqlite(store) => Ledger::from_arc(
                std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>
            ),
            Db::Postgres(store, _) => Ledger::from_arc(
                std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>
            ),
        }
    }

    /// One run of key `i`: the effect row and the success in one
    /// transaction. `Ok(true)` when committed.
    async fn run(
        &self,
        setup: &Setup,
        i: usize,
        run: lockstore_api::ledger::RunGuard,
    ) -> Result<bool, LockError> {
        let key = key(i);
        let fence = run.fence().get() as i64;
        let failed = |err: sqlx::Error| LockError::retryable("test", "effect transaction", err);
        match self {
            Db::Sqlite(store) => {
                let mut tx = store.pool().begin().await.map_err(failed)?;
                sqlx::query("INSERT INTO effects (key, fence) VALUES (?1, ?2)")
                    .bind(&key)
                    .bind(fence)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
                setup.hang_if_marked(i, BEFORE_FINISH).await;
                store
                    .succeed_in(&mut tx, run, Some(fence.to_string().into_bytes()))
                    .await?;
                setup.hang_if_marked(i, BEFORE_COMMIT).await;
                tx.commit().await.map_err(failed)?;
            }
            Db::Postgres(store, effects) => {
                let mut tx = store.pool().begin().await.map_err(failed)?;
                sqlx::query(&format!(
                    "INSERT INTO {effects} (key, fence) VALUES ($1, $2)"
                ))
                .bind(&key)
                .bind(fence)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
                setup.hang_if_marked(i, BEFORE_FINISH).await;
                store
                    .succeed_in(&mut tx, run, Some(fence.to_string().into_bytes()))
                    .await?;
                setup.hang_if_marked(i, BEFORE_COMMIT).await;
                tx.commit().await.map_err(failed)?;
            }
        }
        Ok(true)
    }

    /// The fences of `key`'s effect rows.
    async fn effects_of(&self, key: &str) -> Vec<i64> {
        match self {
            Db::Sqlite(store) => sqlx::query_scalar("SELECT fence FROM effects WHERE key = ?1")
                .bind(key)
                .fetch_all(store.pool())
                .await
                .unwrap(),
            Db::Postgres(store, effects) => {
                sqlx::query_scalar(&format!("SELECT fence FROM {effects} WHERE key = $1"))
                    .bind(key)
                    .fetch_all(store.pool())
                    .await
                    .unwrap()
            }
        }
    }
}

/// A worker process: runs every key it can start until all have succeeded.
async fn worker() {
    let setup = Setup::from_env();
    let db = setup.db().await;
    let ledger = db.ledger();
    let options = RunOptions::new(RUN_TTL).max_attempts(50);
    let offset = std::process::id() as usize % KEYS;
    loop {
        let mut unfinished = 0;
        for i in (0..KEYS).map(|i| (i + offset) % KEYS) {
            let run = match ledger.begin(key(i).as_str(), &options).await {
                Ok(Begin::Started(run)) => run,
                Ok(Begin::AlreadySucceeded(_)) => continue,
                Ok(Begin::Running(_)) => {
                    unfinished += 1;
                    continue;
                }
                Ok(Begin::Ignored(record)) => panic!("{} was given up: {record:?}", key(i)),
                Err(err) if err.is_retryable() => {
                    unfinished += 1;
                    continue;
                }
                Err(err) => panic!("begin {}: {err}", key(i)),
            };
            match db.run(&setup, i, run).await {
                Ok(_) => {}
                // Taken over, or a busy database: rolled back (the
                // transaction was dropped); the key is run again.
                Err(err) if err.is_retryable() || matches!(err, LockError::LeaseLost { .. }) => {
                    unfinished += 1;
                }
                Err(err) => panic!("run {}: {err}", key(i)),
            }
        }
        if unfinished == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The parent: workers, kills, then the checks. Returns the summary line.
async fn kill_workers(name: &str, store: String, dir: &Path) -> Result<String, String> {
    let setup = Setup {
        store,
        markers: dir.join(format!("{name}-markers")),
    };
    std::fs::create_dir_all(&setup.markers).unwrap();
    let db = setup.db().await;
    let ledger = db.ledger();
    let started = std::time::Instant::now();
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| setup.spawn_worker()).collect();
    let (mut before_finish, mut before_commit) = (Vec::new(), Vec::new());
    let mut random_kills = 0;
    let mut randomly_killed = Vec::new();
    let mut next_random = std::time::Instant::now() + random_pause();
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        for entry in std::fs::read_dir(&setup.markers).unwrap() {
            let entry = entry.unwrap();
            let marker = entry.file_name().to_string_lossy().into_owned();
            if marker.starts_with("claimed-") {
                continue;
            }
            let mut parts = marker.splitn(3, '-');
            let (pid, point, key) = (
                parts.next().unwrap().parse::<u32>().unwrap(),
                parts.next().unwrap().parse::<usize>().unwrap(),
                parts.next().unwrap().to_owned(),
            );
            match workers.iter().position(|child| child.id() == pid) {
                Some(at) => {
                    workers[at].kill().unwrap(); // SIGKILL
                    workers[at].wait().unwrap();
                    workers[at] = setup.spawn_worker();
                }
                // A random kill found it hanging first: killed there all the same.
                None if randomly_killed.contains(&pid) => {}
                None => return Err(format!("marker of an unknown worker {pid}")),
            }
            if point == BEFORE_FINISH {
                before_finish.push(key);
            } else {
                before_commit.push(key);
            }
            std::fs::remove_file(entry.path()).unwrap();
        }
        let mut running = Vec::new();
        for (at, child) in workers.iter_mut().enumerate() {
            match child.try_wait().unwrap() {
                None => running.push(at),
                Some(status) if status.success() => {}
                Some(status) => return Err(format!("a worker failed: {status}")),
            }
        }
        if running.is_empty() {
            break;
        }
        if random_kills < RANDOM_KILLS && std::time::Instant::now() >= next_random {
            let at = running[rand::random_range(0..running.len())];
            randomly_killed.push(workers[at].id());
            workers[at].kill().unwrap();
            workers[at].wait().unwrap();
            workers[at] = setup.spawn_worker();
            random_kills += 1;
            next_random = std::time::Instant::now() + random_pause();
        }
        if std::time::Instant::now() > give_up {
            for child in &mut workers {
                let _ = child.kill();
            }
            return Err("workers did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();

    let marked = |point: usize| -> Vec<String> {
        (0..KEYS).filter(|i| i % EVERY == point).map(key).collect()
    };
    before_finish.sort();
    before_commit.sort();
    if before_finish != marked(BEFORE_FINISH) || before_commit != marked(BEFORE_COMMIT) {
        return Err(format!(
            "killed before finish {before_finish:?}, before commit {before_commit:?}"
        ));
    }
    let mut twice_begun = 0;
    for i in 0..KEYS {
        let key = key(i);
        let record = ledger
            .get(key.as_str())
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("{key} has no record"))?;
        if record.status != RunStatus::Succeeded {
            return Err(format!("{key} ended {}", record.status));
        }
        let fence = record
            .fence
            .expect("a succeeded record keeps its fence")
            .get();
        let effects = db.effects_of(&key).await;
        if effects != [fence as i64] {
            return Err(format!(
                "{key}: effect rows with fences {effects:?}; the ledger's run has fence {fence}"
            ));
        }
        if record.result.as_deref() != Some(fence.to_string().as_bytes()) {
            return Err(format!("{key}: result {:?}, fence {fence}", record.result));
        }
        if matches!(i % EVERY, BEFORE_FINISH | BEFORE_COMMIT) && record.attempts < 2 {
            return Err(format!(
                "{key}: killed mid-run but {} attempt",
                record.attempts
            ));
        }
        if record.attempts > 1 {
            twice_begun += 1;
        }
    }
    Ok(format!(
        "{name}: {WORKERS} worker processes, {KEYS} keys, {} killed after the effect before the \
         finish, {} after the finish before the commit, {random_kills} at random; {twice_begun} \
         keys run more than once, every key's effect row exists once with the record's fence \
         ({:.1} s)",
        before_finish.len(),
        before_commit.len(),
        took.as_secs_f64()
    ))
}

fn random_pause() -> Duration {
    Duration::from_millis(rand::random_range(100..600))
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|arg| arg == "--worker") {
        runtime.block_on(worker());
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|arg| arg == "--list") {
        println!("worker_processes_killed_mid_transaction: test");
        return ExitCode::SUCCESS;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("effects-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let namespace = format!("fxkill_{:010x}", rand::random::<u64>() >> 24);
    let mut failed = 0u8;
    for (name, store) in [
        (
            "sqlite",
            format!("sqlite:{}", dir.join("ledger.db").display()),
        ),
        ("postgres", format!("postgres:{namespace}")),
    ] {
        match runtime.block_on(kill_workers(name, store, &dir)) {
            Ok(summary) => {
                println!("{summary}");
                println!("test worker_processes_killed_mid_transaction::{name} ... ok");
            }
            Err(err) => {
                println!("test worker_processes_killed_mid_transaction::{name} ... FAILED: {err}");
                failed += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "test result: {}. {} passed; {} failed",
        if failed > 0 { "FAILED" } else { "ok" },
        2 - failed,
        failed
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
