//! Worker **processes** killed with SIGKILL in the middle of a run, on SQLite
//! and PostgreSQL: every key still ends succeeded exactly once in the
//! resource the runs write to, a killed run is taken over, and no write of a
//! superseded run is accepted.
//!
//! The shared suite's concurrent case crashes runs by dropping their future
//! inside one process. This one kills whole processes, which is what a
//! Lambda timeout, an OOM kill or `kill -9` does: nothing of the worker runs
//! after the signal, not even a destructor.
//!
//! The test binary is its own worker: started with `--worker`, it runs keys
//! until every key has succeeded. The parent starts eight workers, and for
//! each run that announces it is in the middle of its work (a marker file,
//! written by the first run of every 25th key that gets that far, which then
//! hangs while its lease is renewed), kills that worker with SIGKILL and
//! starts a new one. The kills are decided by the marker files, not by
//! timing, so the same keys are killed however busy the machine is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

use lockstore_api::ledger::{Begin, Ledger, LedgerStore, RunOptions, RunStatus};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_sql::{PostgresStore, SqliteStore};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

const WORKERS: usize = 8;
const KEYS: usize = 200;
/// The first run of every `HANG_EVERY`th key to write its first half
/// announces itself and hangs until it is killed.
const HANG_EVERY: usize = 25;
/// Short, so that a killed run is taken over quickly; renewed at a third.
const RUN_TTL: Duration = Duration::from_secs(2);

fn key(i: usize) -> String {
    format!("job-{i:03}")
}

/// The resource the runs write to: it accepts a write only if its fence is
/// at least the highest it accepted for the key (a fenced store), and
/// records every refusal.
async fn resource(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(30))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("open the resource database");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS resource (key TEXT PRIMARY KEY, fence INTEGER NOT NULL, \
         phase TEXT NOT NULL, commits INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS refused (key TEXT NOT NULL, fence INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS starts (key TEXT NOT NULL, fence INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    // A begin whose outcome the worker never learned (a retryable error):
    // the run may have started, and counts an attempt nobody saw.
    sqlx::query("CREATE TABLE IF NOT EXISTS begin_errors (key TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// A fenced write; `commit` marks the run's final write. False if refused.
async fn write(pool: &SqlitePool, key: &str, fence: u64, phase: &str) -> bool {
    let commit = i64::from(phase == "commit");
    let accepted = sqlx::query(
        "INSERT INTO resource (key, fence, phase, commits) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (key) DO UPDATE SET fence = excluded.fence, phase = excluded.phase, \
         commits = resource.commits + excluded.commits WHERE excluded.fence >= resource.fence",
    )
    .bind(key)
    .bind(fence as i64)
    .bind(phase)
    .bind(commit)
    .execute(pool)
    .await
    .expect("write to the resource")
    .rows_affected()
        == 1;
    if !accepted {
        sqlx::query("INSERT INTO refused (key, fence) VALUES (?1, ?2)")
            .bind(key)
            .bind(fence as i64)
            .execute(pool)
            .await
            .unwrap();
    }
    accepted
}

/// Where the parent found PostgreSQL, for its workers.
const POSTGRES_URL_VAR: &str = "LEDGER_KILL_POSTGRES_URL";

/// The PostgreSQL server: in a worker the parent's, else found as the
/// conformance suite finds it (a URL, else a container, else a loud failure).
fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| server_url(Service::Postgres))
}

/// Where a test's processes meet: the ledger's store, the resource file and
/// the marker directory, passed to workers in the environment.
struct Setup {
    /// `sqlite:<path>` or `postgres:<table>` (URL from the environment).
    store: String,
    resource: PathBuf,
    markers: PathBuf,
}

impl Setup {
    fn from_env() -> Self {
        Self {
            store: std::env::var("LEDGER_KILL_STORE").expect("LEDGER_KILL_STORE"),
            resource: std::env::var("LEDGER_KILL_RESOURCE")
                .expect("LEDGER_KILL_RESOURCE")
                .into(),
            markers: std::env::var("LEDGER_KILL_MARKERS")
                .expect("LEDGER_KILL_MARKERS")
                .into(),
        }
    }

    async fn ledger(&self) -> Ledger {
        let store: std::sync::Arc<dyn LedgerStore> =
            if let Some(path) = self.store.strip_prefix("sqlite:") {
                let store = SqliteStore::builder(path)
                    .durable(false)
                    .busy_timeout(Duration::from_secs(30))
                    .build()
                    .await
                    .expect("open the SQLite ledger");
                store.ensure_schema().await.expect("ensure_schema");
                std::sync::Arc::new(store)
            } else if let Some(table) = self.store.strip_prefix("postgres:") {
                let store = PostgresStore::builder(postgres_url())
                    .schema("lockstore_conformance")
                    .table(table)
                    .max_connections(2)
                    .build()
                    .await
                    .expect("connect the PostgreSQL ledger");
                store.ensure_schema().await.expect("ensure_schema");
                std::sync::Arc::new(store)
            } else {
                panic!("unknown store {}", self.store)
            };
        Ledger::from_arc(store)
    }

    fn spawn_worker(&self) -> Child {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        if self.store.starts_with("postgres:") {
            // The parent's server: a worker finding one of its own (a
            // container, when no URL is set) would use another database.
            command.env(POSTGRES_URL_VAR, postgres_url());
        }
        command
            .arg("--worker")
            .env("LEDGER_KILL_STORE", &self.store)
            .env("LEDGER_KILL_RESOURCE", &self.resource)
            .env("LEDGER_KILL_MARKERS", &self.markers)
            .spawn()
            .expect("start a worker process")
    }
}

/// A worker process: runs every key it can start until all have succeeded.
async fn worker() {
    let setup = Setup::from_env();
    let ledger = setup.ledger().await;
    let pool = resource(&setup.resource).await;
    let options = RunOptions::new(RUN_TTL).max_attempts(10);
    let offset = std::process::id() as usize % KEYS;
    loop {
        let mut unfinished = 0;
        for i in (0..KEYS).map(|i| (i + offset) % KEYS) {
            let key = key(i);
            let run = match ledger.begin(key.as_str(), &options).await {
                Ok(Begin::Started(run)) => run,
                Ok(Begin::AlreadySucceeded(_)) => continue,
                Ok(Begin::Running(_)) => {
                    unfinished += 1;
                    continue;
                }
                Ok(Begin::Ignored(record)) => panic!("{key} was given up: {record:?}"),
                Err(err) if err.is_retryable() => {
                    sqlx::query("INSERT INTO begin_errors (key) VALUES (?1)")
                        .bind(&key)
                        .execute(&pool)
                        .await
                        .unwrap();
                    unfinished += 1;
                    continue;
                }
                Err(err) => panic!("begin {key}: {err}"),
            };
            let fence = run.fence().get();
            sqlx::query("INSERT INTO starts (key, fence) VALUES (?1, ?2)")
                .bind(&key)
                .bind(fence as i64)
                .execute(&pool)
                .await
                .unwrap();
            if run.is_lost() || !write(&pool, &key, fence, "start").await {
                unfinished += 1;
                continue; // dropped: the guard records an abandoned attempt
            }
            // The first run of a 25th key to get here claims it (a file
            // created only if absent, so exactly one run in all processes
            // does), tells the parent it is mid-run, and waits for SIGKILL
            // while the guard keeps the lease alive.
            let claim = setup.markers.join(format!("claimed-{key}"));
            if i % HANG_EVERY == 0 && std::fs::File::create_new(&claim).is_ok() {
                let marker = setup.markers.join(format!("{}-{key}", std::process::id()));
                std::fs::write(&marker, b"").expect("write the marker");
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            tokio::task::yield_now().await;
            if run.is_lost() || !write(&pool, &key, fence, "commit").await {
                unfinished += 1;
                continue;
            }
            match run.succeed(Some(fence.to_string().into_bytes())).await {
                Ok(()) => {}
                Err(err) => {
                    eprintln!("worker {}: finishing {key}: {err}", std::process::id());
                    unfinished += 1;
                }
            }
        }
        if unfinished == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The parent: workers, kills, then the checks.
async fn kill_workers_mid_run(name: &str, store: String, dir: &Path) -> Result<(), String> {
    let setup = Setup {
        store,
        resource: dir.join(format!("{name}-resource.db")),
        markers: dir.join(format!("{name}-markers")),
    };
    std::fs::create_dir_all(&setup.markers).unwrap();
    let pool = resource(&setup.resource).await;
    let ledger = setup.ledger().await;

    let mut workers: Vec<Child> = (0..WORKERS).map(|_| setup.spawn_worker()).collect();
    let mut killed = Vec::new();
    let expected_kills = KEYS.div_ceil(HANG_EVERY);
    // Generous: only a worker that never finishes runs into it.
    let give_up = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        for entry in std::fs::read_dir(&setup.markers).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("claimed-") {
                continue;
            }
            let (pid, key) = name.split_once('-').expect("pid-key");
            let pid: u32 = pid.parse().unwrap();
            let at = workers
                .iter()
                .position(|child| child.id() == pid)
                .ok_or_else(|| format!("marker of an unknown worker {pid}"))?;
            // std's Child::kill is SIGKILL on Unix.
            workers[at].kill().unwrap();
            workers[at].wait().unwrap();
            workers[at] = setup.spawn_worker();
            killed.push(key.to_owned());
            std::fs::remove_file(entry.path()).unwrap();
        }
        let mut running = 0;
        for child in &mut workers {
            match child.try_wait().unwrap() {
                None => running += 1,
                Some(status) if status.success() => {}
                Some(status) => return Err(format!("a worker failed: {status}")),
            }
        }
        if running == 0 {
            break;
        }
        if std::time::Instant::now() > give_up {
            for child in &mut workers {
                let _ = child.kill();
            }
            return Err("workers did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every hanging run was killed, once.
    killed.sort();
    let mut hung: Vec<String> = (0..KEYS).step_by(HANG_EVERY).map(key).collect();
    hung.sort();
    if killed != hung || killed.len() != expected_kills {
        return Err(format!("killed {killed:?}, expected {hung:?}"));
    }
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM refused")
        .fetch_one(&pool)
        .await
        .unwrap();
    if refused != 0 {
        return Err(format!(
            "the resource refused {refused} writes of superseded runs"
        ));
    }
    let mut taken_over = 0;
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
        let (resource_fence, phase, commits): (i64, String, i64) =
            sqlx::query_as("SELECT fence, phase, commits FROM resource WHERE key = ?1")
                .bind(&key)
                .fetch_one(&pool)
                .await
                .map_err(|err| format!("{key} not in the resource: {err}"))?;
        if commits != 1 || phase != "commit" || resource_fence as u64 != fence {
            return Err(format!(
                "{key}: resource has {commits} commits, phase {phase}, fence {resource_fence}; \
                 the ledger says fence {fence}"
            ));
        }
        if record.result.as_deref() != Some(fence.to_string().as_bytes()) {
            return Err(format!("{key}: result {:?}, fence {fence}", record.result));
        }
        let count = async |table: &str| -> i64 {
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE key = ?1"))
                .bind(&key)
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let (starts, unseen) = (count("starts").await, count("begin_errors").await);
        // Every run a worker started counts one attempt (the killed ones
        // wrote their `starts` row before hanging); a begin whose reply was
        // lost may have counted one more.
        let attempts = i64::from(record.attempts);
        if attempts < starts || attempts > starts + unseen {
            return Err(format!(
                "{key}: {attempts} attempts recorded, {starts} runs started, {unseen} begins unanswered"
            ));
        }
        if i % HANG_EVERY == 0 {
            if record.attempts < 2 {
                return Err(format!(
                    "{key}: killed mid-run but {} attempt",
                    record.attempts
                ));
            }
            taken_over += 1;
        }
    }
    println!(
        "{name}: {WORKERS} worker processes, {KEYS} keys, {} killed mid-run with SIGKILL, \
         {taken_over} taken over, 0 writes refused, each key committed once",
        killed.len()
    );
    Ok(())
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
    // `cargo test -- --list` and filters: this target is one test.
    if std::env::args().any(|arg| arg == "--list") {
        println!("worker_processes_killed_mid_run: test");
        return ExitCode::SUCCESS;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ledger-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let namespace = format!("kill_{:010x}", rand::random::<u64>() >> 24);
    let mut failed = 0u8;
    for (name, store) in [
        (
            "sqlite",
            format!("sqlite:{}", dir.join("ledger.db").display()),
        ),
        ("postgres", format!("postgres:{namespace}")),
    ] {
        match runtime.block_on(kill_workers_mid_run(name, store, &dir)) {
            Ok(()) => println!("test worker_processes_killed_mid_run::{name} ... ok"),
            Err(err) => {
                println!("test worker_processes_killed_mid_run::{name} ... FAILED: {err}");
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
