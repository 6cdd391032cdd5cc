//! Leased locks with fencing tokens in **PostgreSQL** (shared by every host
//! that can reach the database) or **SQLite** (one file, every process on one
//! host), built on `sqlx`: the `lockstore` backends for teams that already
//! run PostgreSQL, and the embedded default for single-host tools.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore_api::{AcquireOptions, LockClient};
//! use lockstore_sql::PostgresStore;
//!
//! # async fn demo() -> Result<(), lockstore_api::LockError> {
//! let store = PostgresStore::connect("postgres://app@localhost/app").await?;
//! store.ensure_schema().await?; // once; idempotent
//! let client = LockClient::new(store);
//!
//! let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(10));
//! let guard = client.acquire("nightly-report", options).await?;
//! // ... write with guard.fence() so a stale holder is refused ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! The same with SQLite: `SqliteStore::open("/var/lib/app/locks.db")`.
//!
//! # Layout
//!
//! One piece of logic, two dialects:
//!
//! * `lock.rs` and `ledger.rs` — the [`LockStore`](lockstore_api::LockStore)
//!   and [`LedgerStore`](lockstore_api::ledger::LedgerStore)
//!   implementations, written once for both stores.
//! * `postgres.rs`, `sqlite.rs` — each store: its builder and connection,
//!   schema management, and the few steps whose shape differs by dialect
//!   (release with `NOTIFY` or an in-process wake-up; enqueue and retry in
//!   one statement or one transaction).
//! * `sql/` — the statements: `sql/<dialect>/` for locks, `sql/ledger/` for
//!   the ledger (shared text with `{now}` and fence placeholders, plus a file
//!   per dialect where the two cannot share one).
//! * [`finish_in_transaction`] — a run's success written by the caller's
//!   own transaction (`succeed_in`), so effect and record commit together;
//!   [`fenced_write`] — an upsert of the caller's table that refuses a
//!   stale fence, in both dialects.
//! * `shared.rs` — rows to outcomes, in-process wake-ups, error mapping;
//!   `ident.rs` — validated, quoted table and schema names.
//!
//! # The model
//!
//! One row per key: `key`, `lease_id` (NULL once released), `owner`,
//! `fence`, `acquired_at`, `expires_at`, `updated_at`. Each operation of
//! [`LockStore`](lockstore_api::LockStore) is **one SQL statement**, in
//! `src/sql/<dialect>/*.sql`:
//!
//! * **acquire** — an upsert on `key` that takes the row when it is free,
//!   expired or ours. One row comes back: ours, or the holder that refused
//!   us, with its owner, fence and time left — from the same statement, so
//!   a refused acquire costs one round trip. The same lease id asking again
//!   refreshes its lease and keeps its fence (a retried request is
//!   idempotent). The dialects differ here:
//!   * PostgreSQL: first a plain read of the key's row in the statement's
//!     snapshot: a live lease that is not ours refuses at once, without
//!     locking or writing anything (for a waiter, only once an earlier
//!     waiter has asked that lease's release to notify). So a refused poll
//!     writes no row version and takes no row lock (`xmin`, `ctid`, `xmax`
//!     unchanged), and many pollers of one key read side by side instead
//!     of queueing behind each other and the holder's release. Next, a
//!     plain `UPDATE … WHERE <free, expired or ours>` (one WAL record).
//!     Otherwise `INSERT … ON CONFLICT (key) DO UPDATE … WHERE <free,
//!     expired or ours>`, and a `SELECT … FOR SHARE` of the holder when
//!     that `WHERE` is false (a new key, the first waiter of a lease, or a
//!     row that changed after the snapshot): that refusal locks the row and
//!     writes at most `wake_fence`. `FOR SHARE` makes the read follow the
//!     row to the version the upsert judged, not the statement's older
//!     snapshot. When another client created the key's row during the
//!     statement the snapshot cannot see it and no row comes back; the
//!     store then runs the statement again (a second round trip, only in
//!     that race).
//!   * SQLite: `INSERT … ON CONFLICT (key) DO UPDATE SET <each column =
//!     CASE WHEN the row is free, expired or ours THEN new ELSE old END>
//!     RETURNING …`; a refused poll rewrites the row to itself, which costs
//!     little under SQLite's one writer at a time.
//! * **renew** / **release** — an `UPDATE … WHERE key AND lease_id AND not
//!   expired`; no row changed means `Lost` / `NotHeld`. Release keeps the row
//!   with `lease_id = NULL`, so per-key state survives;
//!   `purge_idle(older_than)` deletes rows idle for long enough.
//! * **inspect** — a `SELECT` of the live row.
//!
//! # Clocks
//!
//! Expiry is judged by the database's clock, inside the statement, never by
//! comparing the client's clock with the server's:
//!
//! * PostgreSQL: `now()`, the start of the statement's (single-statement)
//!   transaction. It is one instant for every comparison in the statement;
//!   `clock_timestamp()` would move while the statement runs. When a
//!   statement waits for a row lock, `now()` is earlier than the decision,
//!   which errs on the safe side: leases look less expired, and new leases
//!   end earlier (never later than the holder's own `sent + TTL`).
//! * SQLite: the host clock, `unixepoch('subsec')`, which SQLite holds fixed
//!   for one statement. All processes on the host read the same clock; a
//!   clock stepped forward expires leases early (keep it slewed by NTP).
//!
//! # Fencing
//!
//! * PostgreSQL: a sequence per table, `<table>_fence`. Sequences only move
//!   forward — not back on rollback, row deletion, or restart (they are
//!   WAL-logged; after a crash they skip ahead). A takeover draws its token
//!   in the `SET` list, after the row lock is held, so it is larger than
//!   every earlier holder's. Assumption: no acquire statement runs longer
//!   than `purge_idle`'s `older_than` (a brand-new row draws its token when
//!   its statement starts).
//! * SQLite: no sequences, so a fence table stands in for one: a token is
//!   `max(row's fence, counter) + 1`, and a new row's is `counter + 1`.
//!   Triggers raise the counter to every token issued (to a lock or to a
//!   run of the ledger) and, `BEFORE DELETE`, to each deleted row's fence,
//!   within the same statement. So a token is larger than every earlier
//!   one of the file, locks and runs alike, and no purge (nor a `DELETE` by
//!   hand) can lower a key's next token.
//!
//! # Wake-ups
//!
//! * PostgreSQL: release runs `pg_notify(channel, key)` in the same statement
//!   (delivered on commit). One listener connection per store `LISTEN`s and
//!   wakes local waiters of that key; if it drops — an error, a reset, or
//!   silence caught by a `SELECT 1` probe every 15 s
//!   (`PostgresStoreBuilder::listener_probe`) — everyone is woken and it
//!   reconnects with backoff on a fresh connection, waiters polling
//!   meanwhile. Session advisory
//!   locks are never used (they are not leases and leak through pools).
//! * SQLite: no cross-process notifications. A release wakes waiters in the
//!   same process at once; other processes poll with jittered backoff.
//!
//! # Errors
//!
//! Connection loss, pool timeouts, serialization failures (`40001`),
//! deadlocks (`40P01`), statement timeouts (`57014`) and `SQLITE_BUSY` /
//! `SQLITE_LOCKED` are retryable [`LockError::Backend`](lockstore_api::LockError)s;
//! a missing table (`42P01`, "no such table") is a
//! [`LockError::Config`](lockstore_api::LockError) naming the table and
//! `ensure_schema()`; a malformed URL or table name is a `Config` error too.
//!
//! # Migrations
//!
//! `ensure_schema()` only ever adds: `CREATE … IF NOT EXISTS`, and later
//! `ALTER TABLE … ADD COLUMN` of nullable or defaulted columns (the
//! execution ledger: status, attempts, result, error). Every statement names
//! its columns, so older code keeps working on a newer table.
//!
//! # Features
//!
//! `postgres` and `sqlite`, both on by default.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connections;
pub mod fenced_write;
pub mod finish_in_transaction;
mod ident;
mod ledger;
mod lock;
#[cfg(feature = "postgres")]
mod postgres;
mod semaphore;
mod shared;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{SqliteStore, SqliteStoreBuilder};

/// The `sqlx` this crate is built on: `succeed_in` takes its connections
/// and transactions.
pub use sqlx;

/// Default names, for migrations written by hand.
pub mod defaults {
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub use crate::postgres::{DEFAULT_SCHEMA as POSTGRES_SCHEMA, DEFAULT_TABLE as POSTGRES_TABLE};
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub use crate::sqlite::DEFAULT_TABLE as SQLITE_TABLE;
}
