//! A run's success written by the caller's own transaction: the business
//! write and the "done" mark commit together, or neither does.
//!
//! The ledger alone promises that a key *succeeds* at most once; the work
//! itself can run twice, when a worker writes its rows and dies before it
//! records the success, and the run is taken over. When the rows live in
//! the same database as the ledger, [`PostgresStore::succeed_in`] and
//! [`SqliteStore::succeed_in`] close that gap: they run the ledger's finish
//! statement (`sql/ledger/finish.sql`, the one `succeed` sends) on the
//! caller's connection or transaction, so it commits with the rows.
//!
//! ```no_run
//! # use lockstore_api::ledger::{Begin, Ledger, RunOptions};
//! # use lockstore_sql::PostgresStore;
//! # async fn demo(store: PostgresStore, ledger: Ledger) -> Result<(), Box<dyn std::error::Error>> {
//! # let options = RunOptions::new(std::time::Duration::from_secs(30));
//! let Begin::Started(run) = ledger.begin("load/2026-11-23", &options).await? else { return Ok(()) };
//! let mut tx = store.pool().begin().await?;
//! sqlx::query("INSERT INTO facts (day, fence) VALUES ($1, $2)")
//!     .bind("2026-11-23")
//!     .bind(run.fence().get() as i64)
//!     .execute(&mut *tx)
//!     .await?;
//! // Taken over meanwhile? `LeaseLost`, and `?` drops `tx`: rolled back.
//! store.succeed_in(&mut tx, run, None).await?;
//! tx.commit().await?; // the rows and the run's success, as one
//! # Ok(()) }
//! ```
//!
//! # While the transaction is open
//!
//! * The finish is conditioned on the run's lease id, as `succeed` is: if
//!   another run took the key over first, no row matches, the call returns
//!   [`LockError::LeaseLost`](lockstore_api::LockError::LeaseLost) and the
//!   caller rolls back. Nothing of the stale run commits.
//! * From the call on, the run's lease is **no longer renewed**
//!   ([`RunGuard::detach`](lockstore_api::ledger::RunGuard::detach)). It
//!   need not be: the finish statement has changed the run's row inside
//!   the open transaction, which keeps any takeover out until it ends.
//!   PostgreSQL: the row lock makes a concurrent `begin` (and any renewal)
//!   wait; after a commit it finds the run succeeded and takes nothing
//!   over, after a rollback it finds the run as it was — running, its lease
//!   running out — and takes it over once the lease has expired. SQLite:
//!   the transaction holds the database's write lock, so every other
//!   writer waits for it (up to its busy timeout, then a retryable error).
//!   A takeover never commits beside the transaction.
//! * Finish last: effects written before the call are covered by the
//!   renewing guard; after it, the row lock covers the rest. A transaction
//!   that reads first and writes later in SQLite's deferred mode may get
//!   `SQLITE_BUSY` (retryable) if another writer committed in between:
//!   roll back and let the run be taken over, or use `BEGIN IMMEDIATE`.
//! * In PostgreSQL's `REPEATABLE READ` or `SERIALIZABLE`, a takeover
//!   committed after the transaction's snapshot makes the finish fail with
//!   a serialization error (retryable): roll back.
//! * Waiters are told when the transaction commits: PostgreSQL's
//!   `NOTIFY` (sent by the table's trigger) is delivered on commit; on
//!   SQLite they poll, as waiters in other processes always do.
//! * After a rollback the run stays `running` until its lease expires, and
//!   counts as an attempt, as a crashed run does.
//!
//! [`PostgresStore::succeed_in`]: crate::PostgresStore::succeed_in
//! [`SqliteStore::succeed_in`]: crate::SqliteStore::succeed_in

/// `succeed_in` and `succeed_json_in` for a store: `$store` has
/// `inner.ledger.finish` and `inner.errors`; `$conn` is its dialect's
/// connection type.
macro_rules! impl_finish_in_transaction {
    ($store:ty, $conn:ty, $classify:path) => {
        impl $store {
            /// Records the run's success with `result` (raw bytes, at most
            /// [`MAX_RESULT_BYTES`](lockstore_api::ledger::MAX_RESULT_BYTES))
            /// through `conn` — the caller's own transaction (a
            /// `&mut sqlx::Transaction` derefs to it) on the ledger's
            /// database — so that it commits, or rolls back, with the
            /// caller's writes. Conditioned on the run's lease exactly as
            /// [`RunGuard::succeed`](lockstore_api::ledger::RunGuard::succeed)
            /// is; the run's lease is no longer renewed from this call on.
            /// See the [module docs](crate::finish_in_transaction) for what
            /// happens to renewals and takeovers while the transaction is
            /// open.
            ///
            /// # Errors
            /// [`LockError::LeaseLost`](lockstore_api::LockError::LeaseLost)
            /// when another run took the key over: nothing was recorded,
            /// roll back. [`LockError::ResultTooLarge`](lockstore_api::LockError::ResultTooLarge)
            /// before any statement (the run guard is dropped: the attempt
            /// is recorded as abandoned). A backend error (a retryable one
            /// for a serialization failure or a busy database): roll back.
            pub async fn succeed_in(
                &self,
                conn: &mut $conn,
                run: lockstore_api::ledger::RunGuard,
                result: Option<Vec<u8>>,
            ) -> Result<(), lockstore_api::LockError> {
                lockstore_api::ledger::Finish::Succeeded {
                    result: result.clone(),
                }
                .validate()?;
                let run = run.detach();
                let request = run.succeeded(result)?;
                let binds = $crate::ledger::FinishBinds::of(&request);
                let status: Option<String> = sqlx::query_scalar(&self.inner.ledger.finish)
                    .bind(request.key.as_str())
                    .bind(request.lease_id.to_string())
                    .bind(binds.succeeded)
                    .bind(binds.retryable)
                    .bind(binds.result)
                    .bind(binds.slot)
                    .bind(binds.error)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|err| {
                        let what = format!("finishing the run of {} in a transaction", run.key());
                        self.inner.errors.map(&what, err, $classify)
                    })?;
                match status {
                    Some(_) => Ok(()),
                    None => Err(run.lease_lost()),
                }
            }

            /// [`succeed_in`](Self::succeed_in) with `result` serialised as
            /// JSON, as `run_once` stores it.
            ///
            /// # Errors
            /// As `succeed_in`, and
            /// [`LockError::InvalidArgument`](lockstore_api::LockError::InvalidArgument)
            /// when `result` does not serialise.
            pub async fn succeed_json_in<T: serde::Serialize>(
                &self,
                conn: &mut $conn,
                run: lockstore_api::ledger::RunGuard,
                result: &T,
            ) -> Result<(), lockstore_api::LockError> {
                let bytes = lockstore_api::ledger::result_json(result)?;
                self.succeed_in(conn, run, Some(bytes)).await
            }
        }
    };
}
pub(crate) use impl_finish_in_transaction;
