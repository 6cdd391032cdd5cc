//! The PostgreSQL store: a pool, one statement per operation on a
//! connection kept out of the pool while busy (`connections.rs`: no ping
//! after each statement), and one `LISTEN` connection per store for
//! wake-ups.
//!
//! Read top to bottom: configuration and connection ([`PostgresStoreBuilder`]),
//! the statements (`sql/postgres/*.sql`), schema management, what
//! PostgreSQL adds to the lock and ledger code both stores share
//! (`lock.rs`, `ledger.rs`: release with `NOTIFY`, the one-statement
//! enqueue and retry), the listener task, and the error mapping.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lockstore_api::{LeaseId, LockError};
use sqlx::Connection;
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use crate::finish_in_transaction::impl_finish_in_transaction;
use crate::ident::{Ident, render};
use crate::ledger::{LedgerStatements, impl_ledger_store};
use crate::lock::impl_lock_store;
use crate::semaphore::{SemaphoreStatements, impl_semaphore_store};
use crate::shared::{DbErrorKind, ErrorContext, Waiters, connect_failure};

const BACKEND: &str = "postgres";

/// The statements, as reviewed in `sql/postgres/`; `{table}` and friends are
/// filled in with validated, quoted identifiers when a store is built.
mod sql {
    pub(super) const SCHEMA: &str = include_str!("sql/postgres/schema.sql");
    pub(super) const ACQUIRE: &str = include_str!("sql/postgres/acquire.sql");
    pub(super) const RENEW: &str = include_str!("sql/postgres/renew.sql");
    pub(super) const RELEASE: &str = include_str!("sql/postgres/release.sql");
    pub(super) const INSPECT: &str = include_str!("sql/postgres/inspect.sql");
    pub(super) const PURGE: &str = include_str!("sql/postgres/purge.sql");
}

/// The default schema of the lock table.
pub const DEFAULT_SCHEMA: &str = "public";
/// The default name of the lock table.
pub const DEFAULT_TABLE: &str = "lockstore_locks";

/// Room left in a table name for the `_fence` sequence suffix.
const MAX_TABLE_LEN: usize = Ident::MAX_LEN - "_fence".len();

/// Leased locks in a PostgreSQL table.
///
/// Built with [`PostgresStore::connect`] or [`PostgresStore::builder`].
/// Clones share the pool and the listener. See the [crate docs](crate) for
/// the model; in short:
///
/// * `try_acquire`, `renew`, `release` and `inspect` are each one SQL
///   statement and one round trip; a refused acquire reports the holder from
///   the same statement and writes no row version (crate docs, "The model").
/// * Expiry is judged by the server's `now()`; the client's clock is never
///   compared with the server's.
/// * Fencing tokens come from a sequence of the table's own (`<table>_fence`).
/// * Releases `NOTIFY` a channel that one listener connection per store
///   `LISTEN`s to, so waiters in any process wake at once.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The pool; single statements run on its connections, kept out of it
    /// while busy so that none pays the pool's ping (`connections.rs`).
    connections: crate::connections::Connections<sqlx::Postgres>,
    qualified_table: String,
    channel: String,
    sql: Statements,
    /// The execution ledger's statements (`<table>_runs`).
    ledger: LedgerStatements,
    /// The semaphores' statements (`<table>_semaphores`).
    semaphore: SemaphoreStatements,
    errors: ErrorContext,
    /// `None` when notifications are off: waiters poll.
    waiters: Option<Arc<Waiters>>,
    /// Stops the listener task when the last clone of the store goes.
    _listener: Option<DropGuard>,
}

struct Statements {
    schema: String,
    acquire: String,
    renew: String,
    release: String,
    inspect: String,
    purge: String,
}

/// Options for a [`PostgresStore`]: where to connect, which table, whether
/// to listen for releases.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockstore_api::LockError> {
/// use lockstore_sql::PostgresStore;
///
/// let store = PostgresStore::builder("postgres://app@db.internal/app?sslmode=require")
///     .schema("locking")
///     .table("leases")
///     .max_connections(20)
///     .build()
///     .await?;
/// store.ensure_schema().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PostgresStoreBuilder {
    source: Source,
    schema: String,
    table: String,
    notifications: bool,
    listener_probe: Duration,
    max_connections: u32,
    acquire_timeout: Duration,
}

enum Source {
    Url(String),
    Pool(PgPool),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry a password: never print it.
        match self {
            Source::Url(_) => f.write_str("Url(..)"),
            Source::Pool(_) => f.write_str("Pool(..)"),
        }
    }
}

impl PostgresStoreBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            notifications: true,
            listener_probe: Duration::from_secs(15),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// The schema holding the lock table (default `public`). 1 to 63 ASCII
    /// letters, digits or underscores; used quoted, so case matters.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The lock table (default `lockstore_locks`). 1 to 57 ASCII letters,
    /// digits or underscores (the fence sequence is `<table>_fence`); used
    /// quoted, so case matters. Different tables are independent namespaces.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether releases wake waiters through `LISTEN/NOTIFY` (default on).
    ///
    /// Off, the store opens no listener connection and waiters poll with
    /// backoff. Releases still `NOTIFY`, for other stores on the table.
    pub fn notifications(mut self, on: bool) -> Self {
        self.notifications = on;
        self
    }

    /// How often the `LISTEN` connection proves it is alive with a
    /// `SELECT 1` when no notification came (default 15 s; at least 10 ms).
    /// A connection cut silently (a NAT or load balancer dropping an idle
    /// socket) gives no error; without the probe, wake-ups would just stop.
    /// A probe unanswered within the same interval counts as a lost
    /// connection: waiters are woken and the listener reconnects.
    pub fn listener_probe(mut self, every: Duration) -> Self {
        self.listener_probe = every.max(Duration::from_millis(10));
        self
    }

    /// The pool size when connecting from a URL (default 10). The listener
    /// has a connection of its own on top.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long an operation may wait for a free pooled connection before
    /// failing with a retryable error (default 5 s), when connecting from a
    /// URL.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Validates the names, connects, and starts the listener.
    ///
    /// Does not create anything: call [`PostgresStore::ensure_schema`] (or run
    /// the same DDL as a migration) once.
    ///
    /// # Errors
    /// [`LockError::Config`] for a malformed URL or an invalid schema or table
    /// name; a retryable [`LockError::Backend`] when the server cannot be
    /// reached.
    pub async fn build(self) -> Result<PostgresStore, LockError> {
        let schema = Ident::new(BACKEND, "schema", &self.schema, Ident::MAX_LEN)?;
        let table = Ident::new(BACKEND, "table", &self.table, MAX_TABLE_LEN)?;
        let qualified_table = format!("{}.{}", schema.quoted(), table.quoted());
        let errors = ErrorContext {
            backend: BACKEND,
            table: qualified_table.clone(),
            ensure_call: "PostgresStore::ensure_schema()",
        };
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => {
                let options = PgConnectOptions::from_str(&url).map_err(|err| LockError::Config {
                    backend: BACKEND,
                    message: "invalid PostgreSQL URL: expected postgres://user[:password]@host[:port]/database[?sslmode=...]".into(),
                    source: Some(Box::new(err)),
                })?;
                let tried = format!("connect to {}:{}", options.get_host(), options.get_port());
                match pool_options(self.max_connections, self.acquire_timeout)
                    .connect_with(options.clone())
                    .await
                {
                    Ok(pool) => pool,
                    Err(err) => {
                        // The pool retries until its timeout and then forgets
                        // why: one plain connection says (refused, unknown
                        // host, password rejected).
                        let err = match err {
                            sqlx::Error::PoolTimedOut => {
                                match PgConnection::connect_with(&options).await {
                                    Ok(conn) => {
                                        let _ = conn.close().await;
                                        sqlx::Error::PoolTimedOut
                                    }
                                    Err(err) => err,
                                }
                            }
                            other => other,
                        };
                        return Err(errors.map(&connect_failure(&tried, &err), err, classify));
                    }
                }
            }
        };
        let channel = channel_name(&schema, &table);
        let sql = Statements::render(&schema, &table);
        let fence_seq = format!(
            "{}.{}",
            schema.quoted(),
            table.with_suffix("_fence").quoted()
        );
        let ledger = LedgerStatements::postgres(&schema, &table, &fence_seq, &channel);
        let semaphore = SemaphoreStatements::postgres(&schema, &table, &fence_seq);
        let (waiters, listener) = if self.notifications {
            let waiters = Arc::new(Waiters::default());
            let guard = start_listener(&pool, &channel, &waiters, self.listener_probe)
                .await
                .map_err(|err| errors.map("starting the LISTEN connection", err, classify))?;
            (Some(waiters), Some(guard))
        } else {
            (None, None)
        };
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                connections: crate::connections::Connections::new(pool),
                qualified_table,
                channel,
                sql,
                ledger,
                semaphore,
                errors,
                waiters,
                _listener: listener,
            }),
        })
    }
}

/// One round trip per operation: no ping before handing out a pooled
/// connection (and none after it either: see `connections.rs`). A
/// connection that died while idle fails its next statement with a
/// retryable error and is dropped from the pool.
fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
}

/// The NOTIFY channel of a table: readable when it fits PostgreSQL's 63-byte
/// limit, else a stable hash. A collision would only cause spurious wake-ups.
fn channel_name(schema: &Ident, table: &Ident) -> String {
    let readable = format!("lockstore.{}.{}", schema.as_str(), table.as_str());
    if readable.len() <= Ident::MAX_LEN {
        return readable;
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let hash = readable.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("lockstore.{hash:016x}")
}

impl Statements {
    fn render(schema: &Ident, table: &Ident) -> Self {
        let qualified_table = format!("{}.{}", schema.quoted(), table.quoted());
        let fence_seq = format!(
            "{}.{}",
            schema.quoted(),
            table.with_suffix("_fence").quoted()
        );
        let schema_ddl = if schema.as_str() == DEFAULT_SCHEMA {
            String::new()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS {};", schema.quoted())
        };
        // A literal, not a parameter: the DDL runs as one simple-protocol
        // query. Safe to paste: a validated identifier has no quotes.
        let schema_lock_key = format!("'lockstore:schema:{}'", schema.as_str());
        let values = [
            ("table", qualified_table.as_str()),
            ("fence_seq", fence_seq.as_str()),
            ("schema_ddl", schema_ddl.as_str()),
            ("schema_lock_key", schema_lock_key.as_str()),
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

impl PostgresStore {
    /// Connects to `url` with the default table (`public.lockstore_locks`),
    /// a pool of 10 and notifications on.
    ///
    /// TLS follows the URL's `sslmode` (`disable`, `prefer` (the default),
    /// `require`, `verify-ca`, `verify-full`), with rustls and the webpki
    /// roots; `sslrootcert` names a CA file.
    ///
    /// # Errors
    /// As [`PostgresStoreBuilder::build`].
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::builder(url).build().await
    }

    /// Options for a store connecting to `url`.
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Url(url.into()))
    }

    /// Options for a store on an existing pool (shared with the application).
    ///
    /// Set `test_before_acquire(false)` on that pool to keep one round trip
    /// per operation. The listener opens its own connection with the pool's
    /// connect options.
    ///
    /// On such a pool, while operations keep coming, the store keeps the
    /// connections it used out of the pool and runs its next statements on
    /// them: sqlx tests every connection that comes back to a pool with a
    /// round trip of its own, which doubled what an operation cost the
    /// server. A connection goes back after 1 s unused (or 60 s out in
    /// all), at once when its statement fails, when the pool has no idle
    /// connection and no room for another (somebody may be waiting), and
    /// when the pool is closed. One whose statement was cancelled or failed
    /// on the network is closed instead: sqlx's test of a connection that
    /// went silent waits for an answer with no time limit. So the pool may
    /// show fewer idle connections than it has while the store is busy. A
    /// pool that tests connections before handing them out gets each one
    /// back after every statement, and each operation costs that test's
    /// round trip too.
    pub fn builder_with_pool(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Pool(pool))
    }

    /// Creates the schema, the fence sequence and the lock table if they do
    /// not exist. Idempotent and safe to call from several processes at once:
    /// the DDL is one simple-protocol query (one implicit transaction) behind
    /// a transaction-scoped advisory lock, which ends with the transaction
    /// and so cannot leak.
    ///
    /// To manage the schema with migrations instead, run the DDL from
    /// `src/sql/postgres/schema.sql` with the names filled in.
    ///
    /// # Errors
    /// A [`LockError::Backend`] when the DDL fails (no privilege, connection
    /// loss).
    pub async fn ensure_schema(&self) -> Result<(), LockError> {
        // One simple-protocol query: the ledger's table is created in the
        // same transaction, under the same advisory lock, as the locks'.
        self.run_schema().await
    }

    /// Deletes the rows of keys whose last lease ended more than `older_than`
    /// ago (by the server's clock), and returns how many went.
    ///
    /// Released and expired rows are kept otherwise, so a table of ever-new
    /// keys grows until purged. Purging cannot lower a fence: tokens come
    /// from the table's sequence, which deletion does not touch. Choose
    /// `older_than` longer than any statement may run (say, minutes): a
    /// brand-new row's token is drawn when its statement starts.
    ///
    /// # Errors
    /// A [`LockError::Backend`] when the statement fails.
    pub async fn purge_idle(&self, older_than: Duration) -> Result<u64, LockError> {
        self.run_purge_idle(older_than).await
    }

    /// The pool, to share with the application or to close. Connections the
    /// store keeps out of it while busy go back to it when it is closed (see
    /// [`PostgresStore::builder_with_pool`]).
    pub fn pool(&self) -> &PgPool {
        self.inner.connections.pool()
    }

    /// The lock table as SQL: `"schema"."table"`.
    pub fn table_name(&self) -> &str {
        &self.inner.qualified_table
    }

    /// The `NOTIFY` channel releases are announced on (the payload is the key).
    pub fn notify_channel(&self) -> &str {
        &self.inner.channel
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.qualified_table)
            .field("channel", &self.inner.channel)
            .field("notifications", &self.inner.waiters.is_some())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------- locks

impl PostgresStore {
    /// Waiters of this process (`None` when notifications are off). Other
    /// processes are woken by the `NOTIFY` of the release statement itself.
    fn waiters(&self) -> Option<&Waiters> {
        self.inner.waiters.as_deref()
    }

    /// The schema as one simple-protocol query: one implicit transaction.
    async fn execute_schema(&self, schema: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(schema)
            .execute(self.inner.connections.pool())
            .await?;
        Ok(())
    }

    /// `release.sql`: frees the lease and notifies the channel in one
    /// statement; a row back means released.
    async fn release_row(&self, key: &str, lease_id: LeaseId) -> Result<bool, sqlx::Error> {
        let released = crate::connections::run!(
            self.inner.connections,
            fetch_optional,
            sqlx::query(&self.inner.sql.release)
                .bind(key)
                .bind(lease_id.to_string())
                .bind(&self.inner.channel)
        )?;
        Ok(released.is_some())
    }
}

impl PostgresStore {
    /// `acquire.sql`'s `$5`: whether a task of this process waits for the
    /// key's next release (it subscribed before this attempt), so that a
    /// refusal asks the holder's release to NOTIFY.
    fn bind_waiting<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        key: &str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query.bind(self.waiters().is_some_and(|w| w.has_waiters(key)))
    }
}

impl_lock_store!(PostgresStore, BACKEND, classify);

impl PostgresStore {
    /// The release statement's `$3`: the channel it notifies semaphore
    /// waiters on, in every process.
    fn semaphore_notify(&self) -> Option<&str> {
        Some(&self.inner.channel)
    }
}

impl_semaphore_store!(PostgresStore, BACKEND, classify);

// ---------------------------------------------------------------- ledger

impl PostgresStore {
    /// `enqueue.postgres.sql`: one statement answers created-or-not and the status.
    async fn ledger_enqueue(
        &self,
        key: &str,
        hash: Option<&str>,
    ) -> Result<(bool, String), sqlx::Error> {
        let (status, created): (String, i32) = crate::connections::run!(
            self.inner.connections,
            fetch_one,
            sqlx::query_as(&self.inner.ledger.enqueue)
                .bind(key)
                .bind(hash)
        )?;
        Ok((created == 1, status))
    }

    /// `retry.postgres.sql`: one statement answers the old status and
    /// whether the record was requeued.
    async fn ledger_retry(&self, key: &str) -> Result<Option<(String, bool)>, sqlx::Error> {
        let row: Option<(String, i32)> = crate::connections::run!(
            self.inner.connections,
            fetch_optional,
            sqlx::query_as(&self.inner.ledger.retry).bind(key)
        )?;
        Ok(row.map(|(status, requeued)| (status, requeued == 1)))
    }
}

impl_ledger_store!(PostgresStore, BACKEND, classify);
impl_finish_in_transaction!(PostgresStore, sqlx::PgConnection, classify);

// ---------------------------------------------------------------- listener

/// Opens the listener connection and starts the task that turns
/// notifications into local wake-ups. `LISTEN` has taken effect when this
/// returns, so no release after `build()` is missed.
async fn start_listener(
    pool: &PgPool,
    channel: &str,
    waiters: &Arc<Waiters>,
    probe_every: Duration,
) -> Result<DropGuard, sqlx::Error> {
    let options = (*pool.connect_options()).clone();
    let listener = connect_listener(&options, channel).await?;
    let stop = CancellationToken::new();
    tokio::spawn(listen(
        Listening {
            options,
            channel: channel.to_owned(),
            waiters: Arc::clone(waiters),
            probe_every,
        },
        listener,
        stop.clone(),
    ));
    Ok(stop.drop_guard())
}

/// A listener on a pool of its own: one connection, same connect options as
/// the store's. It holds its connection for the store's lifetime, so it
/// must not take a slot from the operations' pool. And every reconnect
/// gets a *new* pool: dropping a failed `PgListener` sends `UNLISTEN *` on
/// its connection before giving it back, which on a silently dead
/// connection never finishes, and would hold a shared pool's only slot
/// forever. (That task and its socket end when the kernel gives up on the
/// connection.)
async fn connect_listener(
    options: &PgConnectOptions,
    channel: &str,
) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// What the listener task works with.
struct Listening {
    options: PgConnectOptions,
    channel: String,
    waiters: Arc<Waiters>,
    probe_every: Duration,
}

/// What woke the listener task.
enum Event {
    Received(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
    /// Nothing came for `probe_every`: the probe's answer, if it came in time.
    Probed(Option<Result<(), sqlx::Error>>),
}

/// The listener task: one notification wakes the waiters of its key. When
/// the connection drops — an error, an unanswered probe, or a reconnect
/// sqlx did by itself — notifications may have been missed, so everyone is
/// woken (they retry, and fall back to polling until the listener is back).
async fn listen(ctx: Listening, listener: PgListener, stop: CancellationToken) {
    let Listening {
        options,
        channel,
        waiters,
        probe_every,
    } = &ctx;
    // `None` while reconnecting.
    let mut listener = Some(listener);
    let mut failures: u32 = 0;
    loop {
        let Some(active) = listener.as_mut() else {
            let delay =
                lockstore_api::Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
                    .delay(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            match connect_listener(options, channel).await {
                Ok(fresh) => {
                    listener = Some(fresh);
                    // Releases between the failure and now were missed.
                    waiters.wake_all();
                }
                Err(err) => warn!(%channel, error = %err, "reconnecting LISTEN failed"),
            }
            continue;
        };
        let event = tokio::select! {
            () = stop.cancelled() => break,
            received = active.try_recv() => Event::Received(received),
            () = tokio::time::sleep(*probe_every) => {
                // try_recv is cancel-safe (sqlx buffers partial messages);
                // notifications that arrive during the probe are buffered by
                // the listener and returned by the next try_recv.
                let probe = sqlx::query("SELECT 1").execute(&mut *active);
                Event::Probed(
                    tokio::time::timeout(*probe_every, probe)
                        .await
                        .ok()
                        .map(|answer| answer.map(drop)),
                )
            }
        };
        let failure = match event {
            Event::Received(Ok(Some(notification))) => {
                failures = 0;
                waiters.wake(notification.payload());
                continue;
            }
            Event::Received(Ok(None)) => {
                debug!(%channel, "LISTEN connection lost and re-established");
                waiters.wake_all();
                continue;
            }
            Event::Probed(Some(Ok(()))) => continue,
            Event::Received(Err(err)) | Event::Probed(Some(Err(err))) => err.to_string(),
            Event::Probed(None) => format!("no answer to a probe within {probe_every:?}"),
        };
        warn!(%channel, error = %failure, "LISTEN connection failed; waiters poll until it is back");
        listener = None;
        waiters.wake_all();
    }
    // Dropping it sends `UNLISTEN *` and closes its pool, in the background.
    drop(listener);
}

// ---------------------------------------------------------------- errors

/// Sorts PostgreSQL errors by SQLSTATE.
fn classify(err: &dyn DatabaseError) -> DbErrorKind {
    let code = err.code().unwrap_or_default();
    match code.as_ref() {
        // undefined_table (the table or the fence sequence), invalid_schema_name
        "42P01" | "3F000" => DbErrorKind::MissingTable,
        // serialization_failure, deadlock_detected, lock_not_available,
        // query_canceled (statement_timeout), admin/crash shutdown,
        // cannot_connect_now, read_only_sql_transaction (a standby during failover)
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25006" => {
            DbErrorKind::Retryable
        }
        // connection_exception, insufficient_resources (too many connections)
        c if c.starts_with("08") || c.starts_with("53") => DbErrorKind::Retryable,
        _ => DbErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_postgres_limits() {
        let short = channel_name(
            &Ident::new(BACKEND, "schema", "public", 63).unwrap(),
            &Ident::new(BACKEND, "table", "locks", 57).unwrap(),
        );
        assert_eq!(short, "lockstore.public.locks");
        let long = channel_name(
            &Ident::new(BACKEND, "schema", &"s".repeat(63), 63).unwrap(),
            &Ident::new(BACKEND, "table", &"t".repeat(57), 57).unwrap(),
        );
        assert!(long.len() <= 63 && long.starts_with("lockstore."), "{long}");
    }

    #[test]
    fn statements_have_no_placeholders_left() {
        let s = Statements::render(
            &Ident::new(BACKEND, "schema", "app", 63).unwrap(),
            &Ident::new(BACKEND, "table", "Locks", 57).unwrap(),
        );
        for sql in [
            &s.schema, &s.acquire, &s.renew, &s.release, &s.inspect, &s.purge,
        ] {
            assert!(!sql.contains('{'), "{sql}");
        }
        assert!(s.acquire.contains("\"app\".\"Locks\""));
        assert!(s.acquire.contains("nextval('\"app\".\"Locks_fence\"')"));
        assert!(s.schema.contains("CREATE SCHEMA IF NOT EXISTS \"app\";"));
    }
}
