//! A nightly ETL job that must run once per date: not twice at once when a
//! scheduler fires it on two hosts, and not again after it succeeded.
//!
//! The service, [`NightlyEtl`], is generic over [`LedgerStore`]: `main` runs
//! it on the embedded default backend, SQLite (one file shared by every
//! process on the host — start two copies at once to see one skip), and its
//! unit tests (at the bottom) run it on the in-process memory backend with a
//! paused clock. Swapping in `PostgresStore`, `RedisStore` or
//! `DynamoDbStore` changes only `main`.
//!
//! The date runs at most once *successfully*; a worker that loads and dies
//! before the ledger records it is taken over, and loads again (the
//! warehouse's fence check keeps only the newer load). Where the rows live
//! in the ledger's database, `exactly_once_load` writes them and the run's
//! success in one transaction, so a crash between load and finish can no
//! longer load twice.
//!
//! ```text
//! cargo run -p lockstore --example nightly_etl --features sqlite [database-file]
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore::LockError;
use lockstore::ledger::{Ledger, LedgerStore, RunFailure, RunOnce, RunOptions};

/// Where the job writes: like a real warehouse guarded by fencing tokens, it
/// refuses a write carrying a token lower than the last one it accepted for
/// the same partition, so a paused, expired run cannot clobber newer data.
#[derive(Default)]
pub struct Warehouse {
    partitions: Mutex<HashMap<String, (u64, usize)>>,
}

impl Warehouse {
    /// Writes `rows` into `partition` if `fence` is not stale.
    pub fn write(&self, partition: &str, fence: u64, rows: usize) -> Result<(), String> {
        let mut partitions = self.partitions.lock().expect("not poisoned");
        let entry = partitions.entry(partition.to_owned()).or_insert((0, 0));
        if fence < entry.0 {
            return Err(format!(
                "stale writer: fence {fence} < {} for {partition}",
                entry.0
            ));
        }
        *entry = (fence, rows);
        Ok(())
    }

    /// Rows in a partition, if it was loaded.
    pub fn rows(&self, partition: &str) -> Option<usize> {
        let partitions = self.partitions.lock().expect("not poisoned");
        partitions.get(partition).map(|(_, rows)| *rows)
    }
}

/// What a call did.
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// This instance loaded the partition.
    Loaded {
        /// Rows written.
        rows: usize,
        /// The fencing token the rows were written with.
        fence: u64,
    },
    /// An earlier run loaded the date; nothing was done.
    AlreadyLoaded {
        /// Rows that run wrote, as it recorded them.
        rows: usize,
        /// When it finished, in ms since the Unix epoch.
        finished_ms: u64,
    },
    /// Another instance is loading the date right now; this one did nothing.
    AlreadyRunning {
        /// The holder's owner label.
        holder: String,
    },
    /// This run failed (the warehouse refused the write, say); the ledger
    /// records it and the next call tries again while attempts are left.
    Failed {
        /// Why.
        reason: String,
    },
    /// The date failed too often and is left for an operator.
    GivenUp {
        /// The last error.
        reason: String,
    },
}

/// The job: one ledger record per date, a run leased while extracting and
/// loading, the result recorded when done.
pub struct NightlyEtl<L: ?Sized + LedgerStore> {
    ledger: Ledger<L>,
    warehouse: Arc<Warehouse>,
}

impl<L: ?Sized + LedgerStore> NightlyEtl<L> {
    /// A job recording its runs in `ledger` and writing to `warehouse`.
    pub fn new(ledger: Ledger<L>, warehouse: Arc<Warehouse>) -> Self {
        Self { ledger, warehouse }
    }

    /// Loads `date` unless it was loaded already or is being loaded.
    pub async fn run(&self, date: &str) -> Result<RunOutcome, LockError> {
        // A short lease, renewed in the background: a crashed run is taken
        // over within 15 s, a healthy one keeps the date as long as it needs.
        let options = RunOptions::new(Duration::from_secs(15)).max_attempts(3);
        let warehouse = Arc::clone(&self.warehouse);
        let outcome = self
            .ledger
            .run_once(format!("etl/{date}").as_str(), options, |run| async move {
                let rows = extract(date).await;
                let fence = run.fence().get();
                warehouse
                    .write(date, fence, rows)
                    .map_err(RunFailure::retryable)?;
                Ok::<_, RunFailure>((rows, fence))
            })
            .await?;
        Ok(match outcome {
            RunOnce::Ran {
                value: (rows, fence),
                ..
            } => RunOutcome::Loaded { rows, fence },
            RunOnce::AlreadySucceeded {
                value: (rows, _fence),
                record,
            } => RunOutcome::AlreadyLoaded {
                rows,
                finished_ms: record
                    .finished_at
                    .map(lockstore::ledger::unix_millis)
                    .unwrap_or_default(),
            },
            RunOnce::Running { record } => RunOutcome::AlreadyRunning {
                holder: record.owner.unwrap_or_default(),
            },
            RunOnce::Failed { failure, .. } => RunOutcome::Failed {
                reason: failure.to_string(),
            },
            RunOnce::Ignored { record } => RunOutcome::GivenUp {
                reason: record
                    .last_error()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            },
        })
    }
}

/// Pretend to read a day of events.
async fn extract(date: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(200)).await;
    date.bytes().map(usize::from).sum()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lockstore-nightly-etl.db"));
    let store = lockstore::sqlite::SqliteStore::open(&path.to_string_lossy()).await?;
    store.ensure_schema().await?;
    println!("ledger in {}", path.display());
    // The date is recorded in the file: start the example again and every
    // call is skipped, naming what the first successful run recorded.
    let date = "2026-11-23";
    let etl = NightlyEtl::new(Ledger::new(store), Arc::new(Warehouse::default()));
    // Two schedulers fire the same date at once: exactly one loads it.
    let (first, second) = tokio::join!(etl.run(date), etl.run(date));
    println!("first run:  {:?}", first?);
    println!("second run: {:?}", second?);
    // The date is done: a rerun (tomorrow's retry, a redeployed cron) is
    // skipped, and says what the successful run recorded.
    println!("rerun:      {:?}", etl.run(date).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstore::memory::MemoryStore;

    fn etl() -> NightlyEtl<MemoryStore> {
        NightlyEtl::new(
            Ledger::new(MemoryStore::new()),
            Arc::new(Warehouse::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_runs_for_one_date_load_once() {
        let etl = etl();
        let (a, b) = tokio::join!(etl.run("2026-11-23"), etl.run("2026-11-23"));
        let outcomes = [a.unwrap(), b.unwrap()];
        let loaded = outcomes
            .iter()
            .filter(|o| matches!(o, RunOutcome::Loaded { .. }))
            .count();
        assert_eq!(loaded, 1, "{outcomes:?}");
        assert!(outcomes.iter().any(
            |o| matches!(o, RunOutcome::AlreadyRunning { holder } if holder.contains("/pid-"))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loaded_date_is_skipped_and_says_why() {
        let etl = etl();
        let RunOutcome::Loaded { rows, .. } = etl.run("2026-11-23").await.unwrap() else {
            panic!("the first run did not load")
        };
        let rerun = etl.run("2026-11-23").await.unwrap();
        assert!(
            matches!(rerun, RunOutcome::AlreadyLoaded { rows: r, finished_ms } if r == rows && finished_ms > 0),
            "{rerun:?}"
        );
        assert!(matches!(
            etl.run("2026-11-22").await.unwrap(),
            RunOutcome::Loaded { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_then_given_up() {
        let etl = etl();
        // A newer writer already holds the partition: every write is refused.
        etl.warehouse.write("2026-11-23", u64::MAX, 1).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                etl.run("2026-11-23").await.unwrap(),
                RunOutcome::Failed { .. }
            ));
        }
        let third = etl.run("2026-11-23").await.unwrap();
        assert!(matches!(third, RunOutcome::Failed { .. }), "{third:?}");
        let after = etl.run("2026-11-23").await.unwrap();
        assert!(
            matches!(&after, RunOutcome::GivenUp { reason } if reason.contains("stale writer")),
            "{after:?}"
        );
    }

    #[test]
    fn warehouse_refuses_stale_fences() {
        let warehouse = Warehouse::default();
        warehouse.write("p", 5, 1).unwrap();
        assert!(warehouse.write("p", 4, 2).is_err());
        assert_eq!(warehouse.rows("p"), Some(1));
    }
}
