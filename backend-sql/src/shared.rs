//! What both dialects share: turning statement results into outcomes,
//! in-process wake-ups, and the error mapping.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, FencingToken, Holder, LockError, ReleaseSignal, UnexpectedReply,
};
use sqlx::error::DatabaseError;
use tokio::sync::watch;

/// How often `try_acquire` runs its statement when it returns no row (a
/// brand-new key created by someone else just then; PostgreSQL only).
pub(crate) const ACQUIRE_STATEMENT_RUNS: usize = 3;

/// The one row an acquire statement returns, in both dialects.
#[derive(Debug)]
pub(crate) struct AcquireRow {
    /// Whether the row now carries the request's lease id.
    pub(crate) acquired: bool,
    /// The fence on the row (ours when acquired, the holder's otherwise).
    pub(crate) fence: i64,
    /// The owner label on the row.
    pub(crate) owner: String,
    /// Milliseconds until the row's lease expires, by the database's clock.
    pub(crate) ms_left: i64,
}

impl AcquireRow {
    /// Reads the row the acquire statement returns, in either dialect.
    pub(crate) fn from_row<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        &'r str: sqlx::ColumnIndex<R>,
        bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            acquired: row.try_get("acquired")?,
            fence: row.try_get("fence")?,
            owner: row.try_get("owner")?,
            ms_left: row.try_get("ms_left")?,
        })
    }

    /// The outcome this row means. A reply that makes no sense is an error,
    /// never a lock reported as held.
    pub(crate) fn into_outcome(self, backend: &'static str) -> Result<AcquireOutcome, LockError> {
        let fence = fence_from_db(backend, self.fence)?;
        if self.acquired {
            return Ok(AcquireOutcome::Acquired { fence });
        }
        Ok(AcquireOutcome::Held(Holder::new(
            self.owner,
            fence,
            millis_left(self.ms_left),
        )))
    }
}

/// A stored fence as a token. Both dialects store a signed 64-bit integer
/// that only ever holds positive values.
pub(crate) fn fence_from_db(backend: &'static str, fence: i64) -> Result<FencingToken, LockError> {
    u64::try_from(fence)
        .ok()
        .filter(|f| *f > 0)
        .map(FencingToken::new)
        .ok_or_else(|| {
            LockError::permanent(
                backend,
                "the lock row has an invalid fencing token",
                UnexpectedReply(format!("fence {fence}")),
            )
        })
}

/// Time left on a lease, never negative.
pub(crate) fn millis_left(ms_left: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms_left).unwrap_or(0))
}

/// Local, per-key wake-ups for waiters in this process.
///
/// A waiter subscribes before its attempt ([`Waiters::subscribe`]) and is
/// woken by [`Waiters::wake`] for its key or by [`Waiters::wake_all`]. Entries
/// exist only while someone waits: a wake removes its key's entry, and
/// abandoned entries are swept when the map grows.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    map: Mutex<WaiterMap>,
}

#[derive(Debug, Default)]
struct WaiterMap {
    keys: HashMap<String, watch::Sender<()>>,
    sweep_at: usize,
}

impl Waiters {
    /// A signal that resolves on the next wake of `key` (or of everyone).
    pub(crate) fn subscribe(&self, key: &str) -> ReleaseSignal {
        let mut map = self.lock();
        if map.keys.len() >= map.sweep_at.max(64) {
            map.keys.retain(|_, tx| tx.receiver_count() > 0);
            map.sweep_at = map.keys.len() * 2;
        }
        let mut rx = match map.keys.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                map.keys.insert(key.to_owned(), tx);
                rx
            }
        };
        ReleaseSignal::new(async move {
            // Err means the sender was dropped by a wake: a wake all the same.
            let _ = rx.changed().await;
        })
    }

    /// Whether a task of this process waits for `key` (holds a signal).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn has_waiters(&self, key: &str) -> bool {
        self.lock()
            .keys
            .get(key)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Wakes the waiters of `key`.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(tx) = self.lock().keys.remove(key) {
            tx.send_replace(());
        }
    }

    /// Wakes every waiter (a notification may have been missed).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        for (_, tx) in self.lock().keys.drain() {
            tx.send_replace(());
        }
    }

    fn lock(&self) -> MutexGuard<'_, WaiterMap> {
        // Every update is a single map operation: a poisoned map is consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a database error should be reported, as judged by each dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbErrorKind {
    /// Trying again may work (conflict, timeout, busy, connection trouble).
    Retryable,
    /// The table (or its schema) does not exist: `ensure_schema()` was not run.
    MissingTable,
    /// Retrying unchanged will fail again.
    Permanent,
}

/// What an error message needs to say where it happened.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext {
    pub(crate) backend: &'static str,
    /// The table, as a user would type it.
    pub(crate) table: String,
    /// The call that creates the table, e.g. `PostgresStore::ensure_schema()`.
    pub(crate) ensure_call: &'static str,
}

impl ErrorContext {
    /// Maps a sqlx error raised while doing `what` into a [`LockError`],
    /// keeping the sqlx error as the source.
    pub(crate) fn map(
        &self,
        what: &str,
        err: sqlx::Error,
        classify: fn(&dyn DatabaseError) -> DbErrorKind,
    ) -> LockError {
        let backend = self.backend;
        let kind = match &err {
            sqlx::Error::Configuration(_) => {
                return LockError::Config {
                    backend,
                    message: format!("invalid connection settings: {err}"),
                    source: Some(Box::new(err)),
                };
            }
            sqlx::Error::Database(db) => classify(db.as_ref()),
            // Connection loss, a full pool, a crashed SQLite worker thread.
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
                DbErrorKind::Retryable
            }
            // sqlx 0.8 reads the server's one-byte answer to an SSLRequest
            // without checking for end of file, so a connection closed by
            // the peer right then (a restarting server, a proxy dropping
            // new connections) comes back as this protocol error about a
            // zero byte, not as I/O. It is connection loss: retry.
            sqlx::Error::Protocol(message) if is_closed_during_tls_request(message) => {
                DbErrorKind::Retryable
            }
            // A closed pool, bad TLS setup, protocol or decoding trouble.
            _ => DbErrorKind::Permanent,
        };
        match kind {
            DbErrorKind::MissingTable => LockError::Config {
                backend,
                message: format!(
                    "the lock table {} does not exist: call {} once (it is idempotent) \
                     before using the store",
                    self.table, self.ensure_call
                ),
                source: Some(Box::new(err)),
            },
            DbErrorKind::Retryable => LockError::retryable(backend, what, err),
            DbErrorKind::Permanent => LockError::permanent(backend, what, err),
        }
    }
}

/// What went wrong connecting, in the words of the cause: `what` is the
/// place tried (`connect to db:5432`, `opening /var/lib/locks.db`). sqlx's
/// errors name neither the URL nor its password, only the OS's or the
/// server's message.
pub(crate) fn connect_failure(what: &str, err: &sqlx::Error) -> String {
    let cause = match err {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is the server running and the URL's host and port right?)"
                .to_owned()
        }
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "no connection in time".to_owned(),
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    };
    format!("{what}: {cause}")
}

/// A TTL as the milliseconds both dialects bind (`Ttl::MAX` is 24 h, far
/// below `i64::MAX`).
pub(crate) fn ttl_millis(ttl: lockstore_api::Ttl) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// The longest `purge_idle` age accepted (10 years): longer would overflow
/// PostgreSQL's interval arithmetic, and means "never" anyway.
pub(crate) const MAX_IDLE_AGE: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// `purge_idle`'s age as the milliseconds its statement binds, or a typed
/// error for an age beyond [`MAX_IDLE_AGE`].
pub(crate) fn idle_millis(older_than: Duration) -> Result<i64, LockError> {
    if older_than > MAX_IDLE_AGE {
        return Err(LockError::InvalidArgument {
            name: "older_than",
            reason: format!("{older_than:?} is longer than {MAX_IDLE_AGE:?}"),
        });
    }
    Ok(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
}

/// Whether a protocol error is sqlx's report of a connection closed while
/// it waited for the answer to its SSLRequest (see [`ErrorContext::map`]).
fn is_closed_during_tls_request(message: &str) -> bool {
    message.starts_with("unexpected response from SSLRequest: 0x00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_during_the_tls_request_is_retryable() {
        let errors = ErrorContext {
            backend: "postgres",
            table: "t".into(),
            ensure_call: "ensure_schema()",
        };
        let closed = sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into(),
        );
        assert!(
            errors
                .map("connecting", closed, |_| DbErrorKind::Permanent)
                .is_retryable()
        );
        let garbage = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x48".into());
        assert!(
            !errors
                .map("connecting", garbage, |_| DbErrorKind::Permanent)
                .is_retryable()
        );
    }

    #[test]
    fn rows_become_outcomes() {
        let row = |acquired, fence, ms_left| AcquireRow {
            acquired,
            fence,
            owner: "w".into(),
            ms_left,
        };
        assert_eq!(
            row(true, 7, 100).into_outcome("t").unwrap(),
            AcquireOutcome::Acquired {
                fence: FencingToken::new(7)
            }
        );
        let AcquireOutcome::Held(holder) = row(false, 3, -5).into_outcome("t").unwrap() else {
            panic!("held row reported as acquired");
        };
        assert_eq!(holder.expires_in(), Duration::ZERO);
        assert!(row(true, 0, 1).into_outcome("t").is_err());
        assert!(row(true, -1, 1).into_outcome("t").is_err());
    }

    #[tokio::test]
    async fn waiters_wake_per_key_and_all() {
        let waiters = Waiters::default();
        let a = waiters.subscribe("a");
        let b = waiters.subscribe("b");
        waiters.wake("a");
        a.await;
        waiters.wake_all();
        b.await;
        assert!(waiters.lock().keys.is_empty());
    }
}
