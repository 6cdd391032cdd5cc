//! The SQLite store: one database file on one host, shared by any number of
//! processes, one statement per operation.
//!
//! Read top to bottom: configuration and connection ([`SqliteStoreBuilder`]),
//! the statements (`sql/sqlite/*.sql`), schema management, what SQLite
//! adds to the lock and ledger code both stores share (`lock.rs`,
//! `ledger.rs`: release with an in-process wake-up, enqueue and retry in
//! one transaction), the in-process wake-ups, and the error mapping.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use lockstore_api::{LeaseId, LockError};
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::finish_in_transaction::impl_finish_in_transaction;
use crate::ident::{Ident, render};
use crate::ledger::{LedgerStatements, impl_ledger_store};
use crate::lock::impl_lock_store;
use crate::semaphore::{SemaphoreStatements, impl_semaphore_store};
use crate::shared::{DbErrorKind, ErrorContext, Waiters, connect_failure};

const BACKEND: &str = "sqlite";

/// The statements, as reviewed in `sql/sqlite/`.
mod sql {
    pub(super) const SCHEMA: &str = include_str!("sql/sqlite/schema.sql");
    pub(super) const ACQUIRE: &str = include_str!("sql/sqlite/acquire.sql");
    pub(super) const RENEW: &str = include_str!("sql/sqlite/renew.sql");
    pub(super) const RELEASE: &str = include_str!("sql/sqlite/release.sql");
    pub(super) const INSPECT: &str = include_str!("sql/sqlite/inspect.sql");
    pub(super) const PURGE: &str = include_str!("sql/sqlite/purge.sql");

    /// The host clock in integer milliseconds since the Unix epoch. SQLite
    /// returns one 'now' for every call within one statement step.
    pub(super) const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
}

/// The default name of the lock table.
pub const DEFAULT_TABLE: &str = "lockstore_locks";

/// Room left in a table name for the `_fence` suffix of its fence counter table.
const MAX_TABLE_LEN: usize = Ident::MAX_LEN - "_fence".len();

/// Leased locks in a SQLite database file, for one host.
///
/// Any number of processes on the host may open the same file: SQLite's
/// file lock serialises writers, WAL mode lets readers run alongside, and a
/// busy timeout makes contenders wait for the lock instead of failing.
///
/// * Each operation is one SQL statement (the same shapes as PostgreSQL's).
/// * Expiry is judged by the **host clock** (`unixepoch('subsec')` inside the
///   statement): every process on the host reads the same clock. If it is
///   stepped backwards, leases live longer; stepped forwards, they expire
///   early, and the holder's guard (which trusts only its own monotonic
///   clock, `sent + TTL`) may still believe it holds the lock: keep the
///   host clock slewed, not stepped (NTP does this by default).
/// * Fencing tokens strictly increase per key, also across
///   [`purge_idle`](SqliteStore::purge_idle) (see `sql/sqlite/schema.sql`).
/// * Releases wake waiters in this process at once (every store of this
///   process on the same file and table shares the wake-ups); waiters in
///   other processes poll with backoff, since SQLite has no notifications.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The pool; single statements run through it as in the PostgreSQL
    /// store, but SQLite's connections go straight back to the pool
    /// (`returned_at_once`).
    connections: crate::connections::Connections<sqlx::Sqlite>,
    path: PathBuf,
    table: String,
    sql: Statements,
    /// The execution ledger's statements (`<table>_runs`).
    ledger: LedgerStatements,
    /// The semaphores' statements (`<table>_semaphores`).
    semaphore: SemaphoreStatements,
    errors: ErrorContext,
    waiters: Arc<Waiters>,
}

struct Statements {
    schema: String,
    acquire: String,
    renew: String,
    release: String,
    inspect: String,
    purge: String,
}

/// Options for a [`SqliteStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lockstore_api::LockError> {
/// use std::time::Duration;
/// use lockstore_sql::SqliteStore;
///
/// let store = SqliteStore::builder("/var/lib/myapp/locks.db")
///     .table("leases")
///     .busy_timeout(Duration::from_secs(10))
///     .build()
///     .await?;
/// store.ensure_schema().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SqliteStoreBuilder {
    location: String,
    table: String,
    busy_timeout: Duration,
    max_connections: u32,
    durable: bool,
}

impl SqliteStoreBuilder {
    /// The lock table (default `lockstore_locks`): 1 to 57 ASCII letters,
    /// digits or underscores. Different tables are independent namespaces.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a statement waits for another process's write lock before
    /// failing with a retryable error (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The pool size (default 4). SQLite runs one writer at a time anyway;
    /// more connections only help concurrent `inspect`s.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Whether every commit is synced to disk (`synchronous = FULL`, the
    /// default). With `false` (`NORMAL`), a power loss may forget the last
    /// grants, and a forgotten grant's fencing token may be handed out again:
    /// only turn it off when the fenced resource does not outlive a reboot.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Opens (creating if needed) the database file in WAL mode.
    ///
    /// # Errors
    /// [`LockError::Config`] for an invalid table name or URL; a
    /// [`LockError::Backend`] when the file cannot be opened.
    pub async fn build(self) -> Result<SqliteStore, LockError> {
        let table = Ident::new(BACKEND, "table", &self.table, MAX_TABLE_LEN)?;
        let errors = ErrorContext {
            backend: BACKEND,
            table: table.quoted(),
            ensure_call: "SqliteStore::ensure_schema()",
        };
        if matches!(self.location.trim(), "" | ":memory:") {
            // sqlx opens a plain ":memory:" (or "") once per pooled
            // connection: each would see its own empty database, and two
            // holders of one key could both succeed.
            return Err(LockError::config(
                BACKEND,
                format!(
                    "{:?} is not a database file: give a path (e.g. /var/lib/app/locks.db), or \
                     `sqlite::memory:` for an in-memory database this store's connections share",
                    self.location
                ),
            ));
        }
        let options = if self.location.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(&self.location).map_err(|err| LockError::Config {
                backend: BACKEND,
                message: "invalid SQLite URL: expected sqlite://path/to/file.db or a plain path"
                    .into(),
                source: Some(Box::new(err)),
            })?
        } else {
            SqliteConnectOptions::new().filename(&self.location)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(self.busy_timeout)
            .synchronous(if self.durable {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            });
        let path = options.get_filename().to_owned();
        let pool = self.connect(options, &errors).await?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let waiters = shared_waiters(&path, table.as_str());
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                connections: crate::connections::Connections::returned_at_once(pool),
                path,
                table: table.quoted(),
                sql: Statements::render(&table),
                ledger: LedgerStatements::sqlite(
                    &table,
                    &table.with_suffix("_fence").quoted(),
                    sql::NOW_MS,
                ),
                semaphore: SemaphoreStatements::sqlite(
                    &table,
                    &table.with_suffix("_fence").quoted(),
                    sql::NOW_MS,
                ),
                errors,
                waiters,
            }),
        })
    }
}

impl SqliteStoreBuilder {
    /// The pool, its first connection open. Two processes opening one new
    /// file at once race to switch it to WAL, and SQLite may answer the
    /// loser `SQLITE_BUSY` without waiting on the busy timeout (measured:
    /// 6 of 40 pairs of `lockctl` processes on a busy machine). Such an
    /// error is retried, with a growing pause, for up to the busy timeout,
    /// like a busy statement; the error after that names the file and the
    /// cause.
    async fn connect(
        &self,
        options: SqliteConnectOptions,
        errors: &ErrorContext,
    ) -> Result<SqlitePool, LockError> {
        let deadline = Instant::now() + self.busy_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = SqlitePoolOptions::new()
                .max_connections(self.max_connections)
                .acquire_timeout(self.busy_timeout + Duration::from_secs(1))
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await;
            let err = match attempt {
                Ok(pool) => return Ok(pool),
                Err(err) => {
                    let what = format!("opening {}", options.get_filename().display());
                    errors.map(&connect_failure(&what, &err), err, classify)
                }
            };
            if !err.is_retryable() || Instant::now() + pause > deadline {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// The in-process wake-ups of a (file, table): shared by every store of this
/// process on it, so a release through one store wakes waiters of another.
fn shared_waiters(path: &Path, table: &str) -> Arc<Waiters> {
    type Registry = Mutex<HashMap<(PathBuf, String), Weak<Waiters>>>;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let mut registry = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    registry.retain(|_, waiters| waiters.strong_count() > 0);
    let slot = registry
        .entry((path.to_owned(), table.to_owned()))
        .or_default();
    if let Some(waiters) = slot.upgrade() {
        return waiters;
    }
    let waiters = Arc::new(Waiters::default());
    *slot = Arc::downgrade(&waiters);
    waiters
}

impl Statements {
    fn render(table: &Ident) -> Self {
        let quoted = table.quoted();
        let fence_table = table.with_suffix("_fence").quoted();
        let fence_trigger = table.with_suffix("_fence_mark").quoted();
        let fence_insert_trigger = table.with_suffix("_fence_new").quoted();
        let fence_update_trigger = table.with_suffix("_fence_next").quoted();
        let values = [
            ("table", quoted.as_str()),
            ("fence_table", fence_table.as_str()),
            ("fence_trigger", fence_trigger.as_str()),
            ("fence_insert_trigger", fence_insert_trigger.as_str()),
            ("fence_update_trigger", fence_update_trigger.as_str()),
            ("now", sql::NOW_MS),
        ];
        Self {
            schema: render(sql::SCHEMA, &values),
            acquire: render(sql::ACQUIRE, &values),
            renew: render(sql::RENEW, &values),
            release: render(sql::RELEASE, &values),
            inspect: render(sql::INSPECT, &values),
            purge: render(sql::PURGE, &values),
        }
    }
}

impl SqliteStore {
    /// Opens `location` — a file path or a `sqlite://` URL — with the
    /// default table, creating the file if needed.
    ///
    /// # Errors
    /// As [`SqliteStoreBuilder::build`].
    pub async fn open(location: &str) -> Result<Self, LockError> {
        Self::builder(location).build().await
    }

    /// Options for a store on `location` (a file path or a `sqlite://` URL).
    pub fn builder(location: impl Into<String>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            location: location.into(),
            table: DEFAULT_TABLE.to_owned(),
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            durable: true,
        }
    }

    /// Creates the lock table, the ledger's table, their fence counter
    /// table and the triggers that keep it, if they do not exist, in one
    /// `BEGIN IMMEDIATE` transaction. Idempotent; safe from several
    /// processes at once (each statement is `IF NOT EXISTS` or `OR IGNORE`,
    /// and the transaction holds the file's write lock).
    ///
    /// # Errors
    /// A [`LockError::Backend`] when the DDL fails.
    pub async fn ensure_schema(&self) -> Result<(), LockError> {
        self.run_schema().await
    }

    /// Deletes the rows of keys whose last lease ended more than `older_than`
    /// ago (by the host clock), and returns how many went.
    ///
    /// Purging cannot reset fencing: a trigger raises the fence counter
    /// past each deleted row's fence within the same statement, and a
    /// key's next token is at least `counter + 1`.
    ///
    /// # Errors
    /// A [`LockError::Backend`] when the statement fails.
    pub async fn purge_idle(&self, older_than: Duration) -> Result<u64, LockError> {
        self.run_purge_idle(older_than).await
    }

    /// The pool, to close it or run other statements on the same file.
    pub fn pool(&self) -> &SqlitePool {
        self.inner.connections.pool()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The lock table as SQL: `"table"`.
    pub fn table_name(&self) -> &str {
        &self.inner.table
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------- locks

impl SqliteStore {
    /// Waiters in this process are woken by the releasing (or finishing)
    /// store itself; other processes sharing the file poll (SQLite has no
    /// notifications).
    fn waiters(&self) -> Option<&Waiters> {
        Some(&self.inner.waiters)
    }

    /// The schema in a `BEGIN IMMEDIATE` transaction: its one-time catch-up
    /// of the fence counter (`sql/ledger/schema.sqlite.sql`) must not
    /// interleave with a fence being issued, and SQLite runs a
    /// multi-statement query as one autocommit per statement.
    async fn execute_schema(&self, schema: &str) -> Result<(), sqlx::Error> {
        use sqlx::Executor as _;
        // Dropped without a commit on error: rolled back.
        let mut transaction = self
            .inner
            .connections
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await?;
        // `Executor::execute`, not `RawSql::execute`: the latter's generic
        // `async fn`, on a transaction's connection inside the stores'
        // `async_trait` futures, trips rustc's higher-ranked `Send` check.
        (&mut *transaction).execute(sqlx::raw_sql(schema)).await?;
        if let Some((probe, add)) = &self.inner.ledger.took_over_column {
            // A ledger table made before begin reported takeovers lacks the
            // column; under the same write lock, so two processes do not
            // both add it.
            let has = (&mut *transaction).fetch_optional(probe.as_str()).await?;
            if has.is_none() {
                (&mut *transaction).execute(add.as_str()).await?;
            }
        }
        transaction.commit().await
    }

    /// `release.sql`: one row changed means released.
    async fn release_row(&self, key: &str, lease_id: LeaseId) -> Result<bool, sqlx::Error> {
        let result = crate::connections::run!(
            self.inner.connections,
            execute,
            sqlx::query(&self.inner.sql.release)
                .bind(key)
                .bind(lease_id.to_string())
        )?;
        Ok(result.rows_affected() == 1)
    }
}

impl SqliteStore {
    /// Waiters of this process are woken by the release itself, whoever
    /// they are: the acquire statement needs to know nothing.
    fn bind_waiting<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        _key: &str,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
        query
    }
}

impl_lock_store!(SqliteStore, BACKEND, classify);

impl SqliteStore {
    /// SQLite cannot tell other processes: waiters of this process are
    /// woken after the release (`waiters()`), others poll.
    fn semaphore_notify(&self) -> Option<&str> {
        None
    }
}

impl_semaphore_store!(SqliteStore, BACKEND, classify);

// ---------------------------------------------------------------- ledger

impl SqliteStore {
    /// `enqueue.sqlite.sql`, then the status if the key had a record, in
    /// one transaction (SQLite's RETURNING cannot tell insert from no-op).
    async fn ledger_enqueue(
        &self,
        key: &str,
        hash: Option<&str>,
    ) -> Result<(bool, String), sqlx::Error> {
        let mut tx = self.inner.connections.pool().begin().await?;
        let inserted = sqlx::query(&self.inner.ledger.enqueue)
            .bind(key)
            .bind(hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let status = if inserted == 1 {
            "pending".to_owned()
        } else {
            sqlx::query_scalar(&self.inner.ledger.status)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?
        };
        tx.commit().await?;
        Ok((inserted == 1, status))
    }

    /// `retry.sqlite.sql`, then the status if nothing was requeued, in one
    /// transaction.
    async fn ledger_retry(&self, key: &str) -> Result<Option<(String, bool)>, sqlx::Error> {
        let mut tx = self.inner.connections.pool().begin().await?;
        let requeued = sqlx::query(&self.inner.ledger.retry)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = if requeued == 1 {
            Some(("pending".to_owned(), true))
        } else {
            sqlx::query_scalar::<_, String>(&self.inner.ledger.status)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                .map(|status| (status, false))
        };
        tx.commit().await?;
        Ok(row)
    }
}

impl_ledger_store!(SqliteStore, BACKEND, classify);
impl_finish_in_transaction!(SqliteStore, sqlx::SqliteConnection, classify);

// ---------------------------------------------------------------- errors

/// Sorts SQLite errors by result code (sqlx reports the extended code; the
/// primary code is its low byte).
fn classify(err: &dyn DatabaseError) -> DbErrorKind {
    const SQLITE_BUSY: i64 = 5;
    const SQLITE_LOCKED: i64 = 6;
    const SQLITE_IOERR: i64 = 10;
    const SQLITE_PROTOCOL: i64 = 15;
    if err.message().starts_with("no such table") {
        return DbErrorKind::MissingTable;
    }
    let primary = err
        .code()
        .and_then(|code| code.parse::<i64>().ok())
        .map(|code| code & 0xff);
    match primary {
        Some(SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_PROTOCOL) => {
            DbErrorKind::Retryable
        }
        _ => DbErrorKind::Permanent,
    }
}
