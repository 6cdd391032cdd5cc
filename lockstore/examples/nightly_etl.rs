//! A nightly ETL job that must not run twice for the same date, even when a
//! scheduler fires it on two hosts at once.
//!
//! The service, [`NightlyEtl`], is generic over [`LockStore`]: `main` runs it
//! on the embedded default backend, SQLite (one lock file shared by every
//! process on the host — start two copies at once to see one wait out the
//! other), and its unit tests (at the bottom) run it on the in-process memory
//! backend with a paused clock. Swapping in `PostgresStore`, `RedisStore` or
//! `DynamoDbStore` changes only `main`.
//!
//! ```text
//! cargo run -p lockstore --example nightly_etl --features sqlite [lock-file]
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore::{AcquireOptions, LockClient, LockError, LockStore};

/// Where the job writes: like a real warehouse guarded by fencing tokens, it
/// refuses a write carrying a token lower than the last one it accepted for
/// the same partition, so a paused, expired holder cannot clobber newer data.
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

/// What a run did.
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// This instance loaded the partition.
    Loaded {
        /// Rows written.
        rows: usize,
        /// The fencing token the rows were written with.
        fence: u64,
    },
    /// Another instance holds the date; this one did nothing.
    AlreadyRunning {
        /// The holder's owner label.
        holder: String,
    },
    /// The warehouse refused the write: a newer run got there first.
    Refused {
        /// Why the warehouse refused.
        reason: String,
    },
}

/// The job: one lock per date, held while extracting and loading.
pub struct NightlyEtl<S: ?Sized + LockStore> {
    locks: LockClient<S>,
    warehouse: Arc<Warehouse>,
}

impl<S: ?Sized + LockStore> NightlyEtl<S> {
    /// A job taking its locks from `locks` and writing to `warehouse`.
    pub fn new(locks: LockClient<S>, warehouse: Arc<Warehouse>) -> Self {
        Self { locks, warehouse }
    }

    /// Loads `date` unless another instance is already on it.
    pub async fn run(&self, date: &str) -> Result<RunOutcome, LockError> {
        let key = format!("etl/{date}");
        // A short lease, renewed in the background: a crashed run frees the
        // date within 15 s, a healthy one keeps it as long as it needs.
        let options = AcquireOptions::new(Duration::from_secs(15));
        let guard = match self.locks.acquire(key.as_str(), options).await {
            Ok(guard) => guard,
            Err(LockError::Timeout { holder, .. }) => {
                let holder = holder.map(|h| h.owner().to_owned()).unwrap_or_default();
                return Ok(RunOutcome::AlreadyRunning { holder });
            }
            Err(err) => return Err(err),
        };
        let fence = guard.fence().get();
        let rows = tokio::select! {
            () = guard.lost() => return Err(LockError::LeaseLost { key: guard.key().clone(), fence: guard.fence() }),
            rows = extract(date) => rows,
        };
        let written = self.warehouse.write(date, fence, rows);
        guard.release().await?;
        Ok(match written {
            Ok(()) => RunOutcome::Loaded { rows, fence },
            Err(reason) => RunOutcome::Refused { reason },
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
    println!("locks in {}", path.display());
    let etl = NightlyEtl::new(LockClient::new(store), Arc::new(Warehouse::default()));
    // Two schedulers fire the same date at once: exactly one loads it.
    let (first, second) = tokio::join!(etl.run("2026-11-23"), etl.run("2026-11-23"));
    println!("first run:  {:?}", first?);
    println!("second run: {:?}", second?);
    // The next night's run gets a newer fence, so a late straggler from
    // tonight could never overwrite it.
    println!("rerun:      {:?}", etl.run("2026-11-23").await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstore::memory::MemoryStore;

    fn etl() -> NightlyEtl<MemoryStore> {
        NightlyEtl::new(
            LockClient::new(MemoryStore::new()),
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
    async fn different_dates_run_side_by_side_and_reruns_get_newer_fences() {
        let etl = etl();
        let (a, b) = tokio::join!(etl.run("2026-11-22"), etl.run("2026-11-23"));
        assert!(matches!(a.unwrap(), RunOutcome::Loaded { .. }));
        assert!(matches!(b.unwrap(), RunOutcome::Loaded { .. }));
        let RunOutcome::Loaded { fence: first, .. } = etl.run("2026-11-23").await.unwrap() else {
            panic!()
        };
        let RunOutcome::Loaded { fence: second, .. } = etl.run("2026-11-23").await.unwrap() else {
            panic!()
        };
        assert!(second > first);
        assert_eq!(
            etl.warehouse.rows("2026-11-23"),
            Some("2026-11-23".bytes().map(usize::from).sum())
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
