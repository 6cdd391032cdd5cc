//! The execution ledger: run work for a key **at most once successfully**,
//! across processes and machines, on the same backends as the locks.
//!
//! # The model
//!
//! A lock keeps two runs of a job apart; it does not remember that the job
//! *finished*. The ledger does. It keeps one [`RunRecord`] per key — an ETL
//! date, a deploy id, a queue message id — with a [`RunStatus`]
//! (`pending`, `running`, `succeeded`, `failed`, `ignored`), the attempts
//! made, the current or last run's fencing token and owner, the stored
//! result, the last [`ERROR_HISTORY`] errors, an optional request hash and
//! the backend's times.
//!
//! * **Begin** is one atomic request. It starts a run — status `running`,
//!   attempts + 1, a lease with a fresh fencing token — when the record is
//!   absent, pending, failed with attempts left, or running with an
//!   **expired** lease (its worker crashed: the run is taken over within one
//!   TTL). Otherwise it answers with the record as it is, in the same
//!   reply: the stored result, the live holder, or the reason it is not run.
//! * While a run is running, its lease is renewed by the same guard as a
//!   lock's, and the work is told when it is lost. A paused or partitioned
//!   worker stops trusting its run by its local deadline, and the run's
//!   fencing token lets the resource refuse its late writes.
//! * **Succeed** and **fail** are one request each, conditioned on the
//!   run's lease id: a stale finisher (one whose run was taken over) changes
//!   nothing and is told so. A retryable failure leaves the record `failed`
//!   while attempts are left; a fatal one, or the last attempt, makes it
//!   `ignored`.
//! * **Wait** returns the record once its run has ended: it left `running`,
//!   or it is stuck (its worker crashed, and the next begin takes it over).
//!   Woken by the backend's notification where it has one.
//! * **Enqueue** creates a `pending` record and never resets an existing one;
//!   **retry** (an operator's action) puts a failed, ignored or stuck record
//!   back to `pending`; **query** lists records by status, page by page (by
//!   position, not over a snapshot: a record updated between pages moves);
//!   **purge** deletes finished records past a retention and never a
//!   running one.
//!
//! The full list of promises is the "run-once ledger" part of the
//! project's `CONTRACT.md`; the conformance suite checks every backend
//! against it.
//!
//! # Exactly-once effects
//!
//! The ledger promises that a key *succeeds* at most once; the work can
//! still run twice when a worker writes its effect and dies before it
//! records success. Where the effect lives in the ledger's own database,
//! finish the run inside the transaction that writes it:
//! [`RunGuard::detach`] takes the run out of its guard, and the backends
//! write its success through the caller's transaction (`succeed_in` on
//! PostgreSQL and SQLite, a `TransactWriteItems` item on DynamoDB), so
//! effect and record commit together or not at all. Elsewhere, pass
//! [`RunGuard::fence`] to the resource and let it refuse stale fences (each
//! backend crate's `fenced_write` module has a one-request helper).
//!
//! # The layers
//!
//! * [`LedgerStore`] — the transitions a backend implements, each one
//!   request: `begin`, `renew_run`, `finish`, `get`, `enqueue`, `retry`,
//!   `query`, `purge` (plus an optional finish notification).
//! * [`Ledger`] — `run_once`, `begin` with a renewing [`RunGuard`], `wait`,
//!   results as JSON, built once for every backend.
//! * [`IdempotentConsumer`] — at-least-once queue batches (SQS and the like)
//!   processed at most once successfully per message, with a partial-batch
//!   failure report.
//!
//! ```
//! use std::time::Duration;
//! use lockstore_api::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
//! # use lockstore_api::LockError;
//!
//! # async fn demo(ledger: Ledger) -> Result<(), LockError> {
//! let outcome = ledger
//!     .run_once("invoice/4711", RunOptions::new(Duration::from_secs(30)), |run| async move {
//!         let receipt = format!("sent with fence {}", run.fence());
//!         Ok::<_, RunFailure>(receipt)
//!     })
//!     .await?;
//! if let RunOnce::AlreadySucceeded { value, .. } = outcome {
//!     println!("duplicate delivery; the first run said {value:?}");
//! }
//! # Ok(()) }
//! ```

mod client;
mod consumer;
mod record;
mod store;

pub use client::{
    Begin, DetachedRun, Ledger, RunFailure, RunGuard, RunOnce, RunOptions, result_json,
};
pub use consumer::{BatchReport, IdempotentConsumer, Message, Processed};
pub use record::{
    ERROR_HISTORY, MAX_ATTEMPTS, MAX_ERROR_BYTES, MAX_RESULT_BYTES, RequestHash, RunError,
    RunRecord, RunStatus, time_from_unix_millis, unix_millis,
};
pub use store::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    Order, PageCursor, RetryOutcome, RunPage, RunQuery, StatusFilter,
};
