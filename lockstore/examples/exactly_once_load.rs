//! A nightly load that writes its rows **exactly once**, even when its
//! worker dies between loading and recording success.
//!
//! `nightly_etl` runs each date at most once *successfully*; its effect can
//! still happen twice, if a worker loads the rows and dies before the
//! ledger hears of it: the next run, after the takeover, loads them again.
//! Here the rows go into the same SQLite file as the ledger, and the run's
//! success is written by the same transaction (`succeed_in`): the rows and
//! the "done" mark commit together, or neither does.
//!
//! `main` plays it out: a first worker loads the date and "crashes" before
//! committing; a second takes the run over once the first one's lease has
//! run out, loads it and commits; a rerun is skipped. The table holds one
//! load of the date, written with the fence the ledger recorded.
//!
//! ```text
//! cargo run -p lockstore --example exactly_once_load --features sqlite [database-file]
//! ```

use std::time::Duration;

use lockstore::LockError;
use lockstore::ledger::{Begin, Ledger, LedgerStore, RunOptions};
use lockstore::sqlite::SqliteStore;
use lockstore::sqlite::sqlx;

/// How long a run's lease lives unrenewed: a crashed run is taken over
/// after this.
const LEASE: Duration = Duration::from_secs(2);

/// What a call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Load {
    /// This call loaded the date and recorded it, in one transaction.
    Loaded {
        /// Rows written.
        rows: i64,
        /// The run's fence, stored with the rows.
        fence: u64,
    },
    /// The date is loaded already (or being loaded).
    Skipped,
    /// This call "crashed" after loading, before committing: nothing of
    /// it is left.
    Crashed,
}

/// The warehouse table, in the ledger's own database.
pub async fn ensure_warehouse(store: &SqliteStore) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS warehouse_rows \
         (day TEXT NOT NULL, n INTEGER NOT NULL, fence INTEGER NOT NULL)",
    )
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Loads `day` unless it is loaded; with `crash`, stops after writing the
/// rows as a killed worker would, before the commit.
pub async fn load(
    store: &SqliteStore,
    ledger: &Ledger,
    day: &str,
    crash: bool,
) -> Result<Load, Box<dyn std::error::Error>> {
    let options = RunOptions::new(LEASE);
    let run = match ledger
        .begin(format!("load/{day}").as_str(), &options)
        .await?
    {
        Begin::Started(run) => run,
        _ => return Ok(Load::Skipped),
    };
    let fence = run.fence().get();
    let rows = extract(day);
    // One transaction for the rows and the run's success. BEGIN IMMEDIATE
    // takes the file's write lock up front, so no other writer can commit
    // between our reads and writes.
    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
    for n in 0..rows {
        sqlx::query("INSERT INTO warehouse_rows (day, n, fence) VALUES (?1, ?2, ?3)")
            .bind(day)
            .bind(n)
            .bind(i64::try_from(fence)?)
            .execute(&mut *tx)
            .await?;
    }
    if crash {
        // A worker killed here leaves an uncommitted transaction, which
        // SQLite discards, and a run nobody renews or finishes: dropping
        // the transaction and detaching the run's guard does the same.
        drop(tx);
        let _abandoned = run.detach();
        return Ok(Load::Crashed);
    }
    match store.succeed_json_in(&mut tx, run, &rows).await {
        Ok(()) => {}
        // Taken over meanwhile: `tx` is dropped, the rows rolled back.
        Err(LockError::LeaseLost { .. }) => return Ok(Load::Skipped),
        Err(err) => return Err(err.into()),
    }
    tx.commit().await?;
    Ok(Load::Loaded { rows, fence })
}

/// Pretend to read a day of events.
fn extract(day: &str) -> i64 {
    day.bytes().map(i64::from).sum::<i64>() % 50 + 10
}

/// The loads of `day` in the table: `(rows, fences)`.
pub async fn loaded(store: &SqliteStore, day: &str) -> Result<(i64, Vec<i64>), sqlx::Error> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM warehouse_rows WHERE day = ?1")
        .bind(day)
        .fetch_one(store.pool())
        .await?;
    let fences = sqlx::query_scalar("SELECT DISTINCT fence FROM warehouse_rows WHERE day = ?1")
        .bind(day)
        .fetch_all(store.pool())
        .await?;
    Ok((rows, fences))
}

/// Loads until a run commits, as a scheduler retrying would.
async fn load_until_done(
    store: &SqliteStore,
    ledger: &Ledger,
    day: &str,
) -> Result<Load, Box<dyn std::error::Error>> {
    loop {
        match load(store, ledger, day, false).await? {
            Load::Skipped if !is_done(ledger, day).await? => {
                // The crashed run still holds its lease: wait for it.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return Ok(outcome),
        }
    }
}

async fn is_done(ledger: &Ledger, day: &str) -> Result<bool, LockError> {
    Ok(ledger
        .get(format!("load/{day}").as_str())
        .await?
        .is_some_and(|r| r.status == lockstore::ledger::RunStatus::Succeeded))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("lockstore-exactly-once-{}.db", std::process::id()))
        });
    let store = SqliteStore::open(&path.to_string_lossy()).await?;
    store.ensure_schema().await?;
    ensure_warehouse(&store).await?;
    let ledger =
        Ledger::from_arc(std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>);
    let day = "2026-11-23";
    println!(
        "first worker:  {:?}",
        load(&store, &ledger, day, true).await?
    );
    println!(
        "second worker: {:?}",
        load_until_done(&store, &ledger, day).await?
    );
    println!(
        "rerun:         {:?}",
        load(&store, &ledger, day, false).await?
    );
    let (rows, fences) = loaded(&store, day).await?;
    let record = ledger.get(format!("load/{day}").as_str()).await?;
    println!(
        "{day}: {rows} rows, written with fences {fences:?}; the ledger recorded fence {:?}",
        record.and_then(|r| r.fence).map(|f| f.get())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_load_and_finish_never_loads_twice() {
        let path = std::env::temp_dir().join(format!(
            "lockstore-exactly-once-test-{:016x}.db",
            rand_suffix()
        ));
        let store = SqliteStore::open(&path.to_string_lossy()).await.unwrap();
        store.ensure_schema().await.unwrap();
        ensure_warehouse(&store).await.unwrap();
        let ledger =
            Ledger::from_arc(std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn LedgerStore>);
        let day = "2026-11-23";
        assert_eq!(
            load(&store, &ledger, day, true).await.unwrap(),
            Load::Crashed
        );
        assert_eq!(loaded(&store, day).await.unwrap().0, 0);
        let Load::Loaded { rows, fence } = load_until_done(&store, &ledger, day).await.unwrap()
        else {
            panic!("the second worker did not load");
        };
        assert_eq!(
            load(&store, &ledger, day, false).await.unwrap(),
            Load::Skipped
        );
        let record = ledger
            .get(format!("load/{day}").as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.attempts, 2, "the crashed run was taken over");
        assert_eq!(record.fence.unwrap().get(), fence);
        assert_eq!(record.result_json::<i64>().unwrap(), rows);
        assert_eq!(
            loaded(&store, day).await.unwrap(),
            (rows, vec![fence as i64])
        );
        let _ = std::fs::remove_file(&path);
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    }
}
