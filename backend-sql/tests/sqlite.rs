//! SQLite-specific promises: several OS processes contending through one
//! database file never overlap and see strictly increasing fences; fences
//! survive purges and deletes by hand; a missing table names the fix.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, Finish, FinishRequest, LedgerStore, RunError,
};
use lockstore_api::{
    AcquireOptions, AcquireOutcome, AcquireRequest, Backoff, FencingToken, LeaseId, LockClient,
    LockError, LockKey, LockStore, OwnerLabel,
};
use lockstore_sql::SqliteStore;
use support::{sqlite_path, sqlite_store};

/// Set in a child process: the database file to hammer.
const CHILD_DB: &str = "LOCKSTORE_SQLITE_CHILD_DB";
/// Set in a child process: where to write its critical-section records.
const CHILD_LOG: &str = "LOCKSTORE_SQLITE_CHILD_LOG";
const PROCESSES: usize = 4;
const KEYS: usize = 2;
const CYCLES_PER_PROCESS: usize = 300;

fn request(key: &str, ttl_ms: u64) -> AcquireRequest {
    AcquireRequest {
        key: LockKey::new(key).unwrap(),
        lease_id: LeaseId::random(),
        ttl: lockstore_api::Ttl::from_millis(ttl_ms).unwrap(),
        owner: OwnerLabel::new("test").unwrap(),
    }
}

async fn acquired(store: &dyn LockStore, req: &AcquireRequest) -> FencingToken {
    match store.try_acquire(req).await.unwrap() {
        AcquireOutcome::Acquired { fence } => fence,
        AcquireOutcome::Held(h) => panic!("{} refused, held by {h:?}", req.key),
    }
}

fn fresh_namespace() -> String {
    format!("s{:016x}", rand::random::<u64>())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The child role of [`processes_sharing_a_file_never_overlap`]: does nothing
/// unless started by it (with `CHILD_DB` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_child_role() {
    let (Ok(db), Ok(log)) = (std::env::var(CHILD_DB), std::env::var(CHILD_LOG)) else {
        return;
    };
    let store = sqlite_store(Path::new(&db)).await;
    let client = LockClient::new(store).with_backoff(Backoff::new(
        Duration::from_micros(500),
        Duration::from_millis(10),
    ));
    let options = AcquireOptions::new(Duration::from_secs(60)).wait_forever();
    let mut records = String::new();
    for cycle in 0..CYCLES_PER_PROCESS {
        let key = format!("shared-{}", cycle % KEYS);
        let lease = client
            .acquire_lease(key.as_str(), options)
            .await
            .expect("acquire");
        let enter = now_nanos();
        // Hold it long enough for the others to collide with us.
        std::thread::sleep(Duration::from_micros(200));
        let exit = now_nanos();
        client.release(&lease).await.expect("release");
        records.push_str(&format!("{key} {} {enter} {exit}\n", lease.fence()));
    }
    std::fs::File::create(log)
        .and_then(|mut f| f.write_all(records.as_bytes()))
        .expect("write the records");
}

/// Four OS processes (this test binary, re-run in its child role) contend
/// for the same keys through one file. Every critical section is recorded
/// with wall-clock enter and exit times (one host, one clock); per key,
/// sorted by entry, no section starts before the previous one ended, and
/// fences strictly increase.
#[test]
fn processes_sharing_a_file_never_overlap() {
    let db = sqlite_path(&fresh_namespace());
    // Create the schema once up front, as an application would.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sqlite_store(&db));
    let exe = std::env::current_exe().unwrap();
    let logs: Vec<PathBuf> = (0..PROCESSES)
        .map(|i| db.with_extension(format!("child{i}.log")))
        .collect();
    let children: Vec<_> = logs
        .iter()
        .map(|log| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "multi_process_child_role",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(CHILD_DB, &db)
                .env(CHILD_LOG, log)
                .spawn()
                .expect("start a child process")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a child process failed");
    }

    let mut per_key: BTreeMap<String, Vec<(u64, u128, u128)>> = BTreeMap::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("a child wrote its records");
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            per_key.entry(parts[0].to_owned()).or_default().push((
                parts[1].parse().unwrap(),
                parts[2].parse().unwrap(),
                parts[3].parse().unwrap(),
            ));
        }
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    assert_eq!(total, PROCESSES * CYCLES_PER_PROCESS);
    for (key, sections) in &mut per_key {
        sections.sort_by_key(|&(_, enter, _)| enter);
        for pair in sections.windows(2) {
            let ((fence_a, _, exit_a), (fence_b, enter_b, _)) = (pair[0], pair[1]);
            assert!(
                exit_a <= enter_b,
                "{key}: fence {fence_a} still held when fence {fence_b} entered"
            );
            assert!(
                fence_b > fence_a,
                "{key}: fence went from {fence_a} to {fence_b}"
            );
        }
    }
    println!("{total} critical sections across {PROCESSES} processes, no overlap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_survives_purge_and_delete_by_hand() {
    let store = sqlite_store(&sqlite_path(&fresh_namespace())).await;
    let first = request("purged", 60_000);
    let fence1 = acquired(&store, &first).await;
    store.release(&first.key, first.lease_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge_idle(Duration::ZERO).await.unwrap(), 1);
    let second = request("purged", 60_000);
    let fence2 = acquired(&store, &second).await;
    assert!(
        fence2 > fence1,
        "fence went from {fence1} to {fence2} across a purge"
    );

    // An operator's DELETE cannot reset it either.
    sqlx::query(&format!("DELETE FROM {}", store.table_name()))
        .execute(store.pool())
        .await
        .unwrap();
    let third = request("purged", 60_000);
    let fence3 = acquired(&store, &third).await;
    assert!(
        fence3 > fence2,
        "fence went from {fence2} to {fence3} across a DELETE"
    );
}

/// Begins a run of `key`, failing unless it started; its fence.
async fn run_started(store: &SqliteStore, key: &str, max_attempts: u32) -> (BeginRequest, u64) {
    let request = BeginRequest {
        key: LockKey::new(key).unwrap(),
        lease_id: LeaseId::random(),
        ttl: lockstore_api::Ttl::from_millis(60_000).unwrap(),
        owner: OwnerLabel::new("test").unwrap(),
        max_attempts,
        request_hash: None,
    };
    match store.begin(&request).await.unwrap() {
        BeginOutcome::Started { fence, .. } => (request, fence.get()),
        BeginOutcome::Existing(record) => panic!("{key} did not start: {record:?}"),
    }
}

/// Releases `key`'s lock and takes it again: the free row's takeover fence.
async fn retaken(store: &SqliteStore, held: &AcquireRequest) -> (AcquireRequest, u64) {
    store.release(&held.key, held.lease_id).await.unwrap();
    let again = request(held.key.as_str(), 60_000);
    let fence = acquired(store, &again).await.get();
    (again, fence)
}

/// As on PostgreSQL (one sequence), a token is larger than every earlier
/// token of its key, locks and runs alike ("for locks and runs alike",
/// `LedgerStore`'s docs): new rows and takeovers of both tables draw from
/// one counter, in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_run_fences_of_a_key_come_from_one_counter() {
    let store = sqlite_store(&sqlite_path(&fresh_namespace())).await;
    // A new lock row, then a new run record.
    let lock = request("shared", 60_000);
    let lock_fence = acquired(&store, &lock).await.get();
    let (run, run_fence) = run_started(&store, "shared", 2).await;
    assert!(
        run_fence > lock_fence,
        "run {run_fence} after lock {lock_fence}"
    );
    // The lock row taken again, after the run.
    let (lock, lock_fence) = retaken(&store, &lock).await;
    assert!(
        lock_fence > run_fence,
        "lock {lock_fence} after run {run_fence}"
    );
    // The run record's second attempt, then the lock row again.
    store
        .finish(&FinishRequest {
            key: run.key.clone(),
            lease_id: run.lease_id,
            finish: Finish::Failed {
                error: RunError::new(1, "again", true),
            },
        })
        .await
        .unwrap();
    let (_, run_fence) = run_started(&store, "shared", 2).await;
    assert!(
        run_fence > lock_fence,
        "run {run_fence} after lock {lock_fence}"
    );
    let (_, lock_fence) = retaken(&store, &lock).await;
    assert!(
        lock_fence > run_fence,
        "lock {lock_fence} after run {run_fence}"
    );
    // A new run record first, then a new lock row.
    let (_, run_fence) = run_started(&store, "other", 1).await;
    let lock_fence = acquired(&store, &request("other", 60_000)).await.get();
    assert!(
        lock_fence > run_fence,
        "lock {lock_fence} after run {run_fence}"
    );
}

/// A file whose fences were issued before the counter was shared (its
/// triggers missing, its counter raised by deletes only) is caught up by
/// `ensure_schema`, so its keys' next runs are still above their locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_schema_catches_an_older_files_fence_counter_up() {
    let store = sqlite_store(&sqlite_path(&fresh_namespace())).await;
    let lock_fence = acquired(&store, &request("old", 60_000)).await.get();
    let table = lockstore_sql::defaults::SQLITE_TABLE;
    for trigger in [
        "fence_new",
        "fence_next",
        "runs_fence_new",
        "runs_fence_next",
    ] {
        sqlx::query(&format!("DROP TRIGGER \"{table}_{trigger}\""))
            .execute(store.pool())
            .await
            .unwrap();
    }
    sqlx::query(&format!("UPDATE \"{table}_fence\" SET high = 0"))
        .execute(store.pool())
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    let (_, run_fence) = run_started(&store, "old", 1).await;
    assert!(
        run_fence > lock_fence,
        "run {run_fence} after lock {lock_fence}"
    );
}

/// A file whose ledger table was made before begin reported takeovers (no
/// `took_over` column) gets the column from `ensure_schema`, once (a second
/// call finds it), and its stuck runs are then reported taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_schema_adds_the_took_over_column_to_an_older_table() {
    let store = sqlite_store(&sqlite_path(&fresh_namespace())).await;
    let table = lockstore_sql::defaults::SQLITE_TABLE;
    let (crashed, _) = run_started(&store, "older", 3).await;
    // A run on the older table whose lease has expired: stuck.
    sqlx::query(&format!(
        "UPDATE \"{table}_runs\" SET expires_ms = 0 WHERE key = 'older'"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE \"{table}_runs\" DROP COLUMN took_over"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    store.ensure_schema().await.unwrap();
    store.ensure_schema().await.unwrap();
    let taker = BeginRequest {
        lease_id: LeaseId::random(),
        ..crashed
    };
    match store.begin(&taker).await.unwrap() {
        BeginOutcome::Started {
            attempt, took_over, ..
        } => {
            assert_eq!(attempt, 2);
            assert!(took_over, "the stuck run's takeover was not reported");
        }
        BeginOutcome::Existing(record) => panic!("the stuck run was not taken over: {record:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_live_leases() {
    let store = sqlite_store(&sqlite_path(&fresh_namespace())).await;
    let live = request("live", 60_000);
    acquired(&store, &live).await;
    assert_eq!(store.purge_idle(Duration::ZERO).await.unwrap(), 0);
    assert!(store.inspect(&live.key).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_is_a_config_error_naming_table_and_fix() {
    let path = sqlite_path(&fresh_namespace());
    let store = SqliteStore::builder(format!("sqlite://{}", path.display()))
        .table("never_created")
        .build()
        .await
        .unwrap();
    let err = store.try_acquire(&request("k", 1000)).await.unwrap_err();
    let LockError::Config { message, .. } = &err else {
        panic!("expected a Config error, got {err:?}");
    };
    assert!(message.contains("\"never_created\""), "{message}");
    assert!(message.contains("ensure_schema()"), "{message}");
}

/// A new file is switched to WAL by the first store that opens it, and
/// that switch needs the file to itself: SQLite answers `SQLITE_BUSY` at
/// once, without the busy timeout, while another connection writes it (two
/// processes starting together on a new file: 6 of 40 `lockctl` pairs on a
/// busy machine). The open retries that, so it gets in once the writer is
/// done, and a file that stays busy past the busy timeout is an error
/// naming the file and the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_new_file_another_connection_writes_waits_for_it() {
    use sqlx::{Connection, Executor};
    let path = sqlite_path(&fresh_namespace());
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut writer = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    writer.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    writer.execute("INSERT INTO t VALUES (1)").await.unwrap();

    let busy = SqliteStore::builder(path.to_str().unwrap())
        .busy_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap_err();
    assert!(busy.is_retryable(), "{busy:?}");
    let message = busy.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("database is locked"), "{message}");

    let opening = tokio::spawn(async move {
        SqliteStore::builder(path.to_str().unwrap())
            .busy_timeout(Duration::from_secs(30))
            .build()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.execute("COMMIT").await.unwrap();
    let store = opening
        .await
        .unwrap()
        .expect("the open waits out the writer");
    store.ensure_schema().await.unwrap();
}

#[tokio::test]
async fn bad_names_and_urls_are_config_errors() {
    let err = SqliteStore::builder("/tmp/x.db")
        .table("a-b")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
    let err = SqliteStore::open("sqlite://?mode=bogus").await.unwrap_err();
    assert!(matches!(err, LockError::Config { .. }), "{err:?}");
}

/// Review m4: a plain `:memory:` (or empty) location would give every pooled
/// connection its own database; it is refused with the form that works, and
/// that form (`sqlite::memory:`) is one database for the whole store.
#[tokio::test]
async fn a_private_in_memory_location_is_refused_and_the_shared_one_works() {
    for location in ["", ":memory:"] {
        let err = SqliteStore::open(location).await.unwrap_err();
        assert!(
            matches!(&err, LockError::Config { message, .. } if message.contains("sqlite::memory:")),
            "{location:?}: {err}"
        );
    }
    let store = SqliteStore::builder("sqlite::memory:")
        .max_connections(4)
        .build()
        .await
        .unwrap();
    store.ensure_schema().await.unwrap();
    // Hold several connections at once, so statements land on different
    // ones: each sees the one table and the one holder.
    let lease = request("shared", 60_000);
    assert!(matches!(
        store.try_acquire(&lease).await.unwrap(),
        AcquireOutcome::Acquired { .. }
    ));
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        async move { store.try_acquire(&request("shared", 60_000)).await }
    });
    for outcome in futures::future::join_all(attempts).await {
        assert!(
            matches!(outcome.unwrap(), AcquireOutcome::Held(_)),
            "a second holder on another connection"
        );
    }
}

/// Review m8: an idle age too large for the database's arithmetic is a
/// typed error before any statement.
#[tokio::test]
async fn purge_idle_refuses_an_absurd_age() {
    let store = sqlite_store(&sqlite_path(&format!("purge{}", std::process::id()))).await;
    let err = store.purge_idle(Duration::MAX).await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                name: "older_than",
                ..
            }
        ),
        "{err:?}"
    );
}
