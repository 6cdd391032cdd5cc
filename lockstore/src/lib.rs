//! Leased distributed locks with fencing tokens, and an execution ledger
//! that runs work at most once successfully — one API over in-process
//! memory, SQLite, PostgreSQL, Redis and DynamoDB.
//!
//! # What it is for
//!
//! Services on Lambda, Fargate, EC2 or Kubernetes run jobs that must not run
//! twice at once — an ETL for one date, a deploy, a cron run that fires on
//! every replica, a queue message delivered twice. `lockstore` gives them:
//!
//! * **Locks** ([`LockClient`]): a key held for a TTL, renewed in the
//!   background while you work, with a [`FencingToken`] that grows with
//!   every acquisition so the resource you protect can refuse a writer whose
//!   lease ran out.
//! * **Run once** ([`ledger::Ledger`]): a record per key that says whether
//!   the work ran, is running elsewhere, succeeded (with its stored result),
//!   or failed; a crashed run is taken over within one lease.
//!
//! You write the service against the traits ([`LockStore`],
//! [`ledger::LedgerStore`]), test it on the memory backend, and pick the
//! production backend with a cargo feature and a URL.
//!
//! # A first lock
//!
//! ```
//! use std::time::Duration;
//! use lockstore::{AcquireOptions, LockClient, memory::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockstore::LockError> {
//! let client = LockClient::new(MemoryStore::new());
//! let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(5));
//! let loaded = client
//!     .with_lock("etl/2026-11-23", options, |lease| async move {
//!         // Pass lease.fence() to the warehouse so a stale writer is refused.
//!         format!("loaded with fence {}", lease.fence())
//!     })
//!     .await?;
//! assert!(loaded.starts_with("loaded"));
//! # Ok(()) }
//! ```
//!
//! [`LockClient::acquire`] gives a [`LockGuard`] instead, for work that
//! watches the lease itself: `guard.lost()` resolves when the lease can no
//! longer be trusted, and `guard.check()` gives the fence right before a
//! write. The model — leases, expiry by the backend's clock, the safety
//! margin, fencing — is explained in [`lockstore_api`].
//!
//! # Run once: the ledger
//!
//! A lock keeps two runs apart; the ledger also remembers that a run
//! finished, so a rerun or a second instance skips it:
//!
//! ```
//! use std::time::Duration;
//! use lockstore::ledger::{Ledger, RunFailure, RunOnce, RunOptions};
//! use lockstore::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lockstore::LockError> {
//! let ledger = Ledger::new(MemoryStore::new());
//! let options = RunOptions::new(Duration::from_secs(30)).max_attempts(3);
//! for _ in 0..2 {
//!     let outcome = ledger
//!         .run_once("invoice/4711", options.clone(), |run| async move {
//!             // Renewed while this runs; a retryable error leaves it to a later call.
//!             Ok::<_, RunFailure>(format!("sent with fence {}", run.fence()))
//!         })
//!         .await?;
//!     match outcome {
//!         RunOnce::Ran { value, .. } => println!("ran: {value}"),
//!         RunOnce::AlreadySucceeded { value, .. } => println!("skipped, the first run said: {value}"),
//!         other => println!("not run: {other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! [`ledger::Ledger::wait`] waits for a run elsewhere to finish,
//! [`ledger::IdempotentConsumer`] processes at-least-once queue batches
//! (SQS and the like; with the `lambda` feature, `lockstore::lambda` is the handler
//! of an SQS-triggered AWS Lambda function), and `enqueue`, `retry`,
//! `query` and `purge` are for schedulers and operators.
//!
//! # Choosing a backend
//!
//! Each backend is a cargo feature of this crate (only `memory` is on by
//! default) and a URL form of [`open`]:
//!
//! | feature | URL | store | expiry judged by | create once |
//! |---------|-----|-------|------------------|-------------|
//! | `memory` | `memory:` | [`memory::MemoryStore`] | tokio's clock, in-process | nothing |
//! | `sqlite` | `sqlite:/var/lib/app/locks.db` | [`sqlite::SqliteStore`] | the host's clock; processes of one host | tables ([`Store::ensure_schema`]) |
//! | `postgres` | `postgres://user:pw@host/db` | [`postgres::PostgresStore`] | the server's clock | schema, tables, a sequence |
//! | `redis` | `redis://host:6379`, `rediss://…`, `redis+cluster://h1:p1,h2:p2` | [`redis::RedisStore`] | the server's clock | nothing |
//! | `dynamodb` | `dynamodb://Table?region=eu-west-1` | [`dynamodb::DynamoDbStore`] | the clients' clocks, with a skew allowance (or the skew-free mode) | a table with an index and TTL |
//!
//! ```toml
//! [dependencies]
//! lockstore = { version = "0.1", features = ["postgres"] }
//! tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
//! ```
//!
//! Each backend states what it assumes (Redis without asynchronous failover
//! and with `noeviction`, PostgreSQL's fence sequence left alone, DynamoDB
//! clients' clock skew) in its crate's docs, linked from its module here,
//! and every backend passes one conformance suite against a real server.
//!
//! # From configuration to a running service
//!
//! [`open`] turns a URL into a [`Store`]: the lock store and the ledger of
//! one backend as trait objects, so the service's code is the same on each.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore::AcquireOptions;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = std::env::var("LOCKSTORE_URL")?; // e.g. "postgres://app:secret@db/app"
//! let store = lockstore::open(&url).await?;
//! store.ensure_schema().await?; // tables where the backend has them; idempotent
//!
//! let guard = store
//!     .lock_client()
//!     .acquire("deploy/prod", AcquireOptions::new(Duration::from_secs(15)))
//!     .await?;
//! println!("deploying with fence {}", guard.fence());
//! guard.release().await?;
//!
//! let ledger = store.ledger_client(); // the same backend's ledger
//! # let _ = ledger;
//! # Ok(()) }
//! ```
//!
//! A URL of a backend this build lacks is refused with the feature to add
//! ([`OpenError::FeatureDisabled`]); a malformed one with what to write
//! instead ([`OpenError::Malformed`]), and no error shows a password.
//!
//! # Each backend, step by step
//!
//! Every backend has a small program in `lockstore/examples/` that opens it
//! with its builder, creates what it needs, holds a lock and runs a ledger
//! entry once; copy the one you need. `examples/open_url.rs` does the same
//! from a URL.
//!
//! **SQLite** (`features = ["sqlite"]`): one file shared by the processes
//! of one host. `cargo run -p lockstore --example sqlite --features sqlite
//! -- /tmp/locks.db`
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn example() -> Result<(), lockstore::LockError> {
//! use lockstore::{LockClient, ledger::Ledger, sqlite::SqliteStore};
//!
//! let store = SqliteStore::builder("/var/lib/app/locks.db").build().await?;
//! store.ensure_schema().await?;
//! let (locks, ledger) = (LockClient::new(store.clone()), Ledger::new(store));
//! # let _ = (locks, ledger); Ok(()) }
//! ```
//!
//! **PostgreSQL** (`features = ["postgres"]`): the server's clock, waiters
//! woken by `LISTEN/NOTIFY`. `ensure_schema` needs the right to create a
//! schema and tables once; run its DDL as a migration instead if the
//! service's role may not. `LOCKSTORE_POSTGRES_URL=postgres://… cargo run
//! -p lockstore --example postgres --features postgres`
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example() -> Result<(), lockstore::LockError> {
//! use lockstore::{LockClient, ledger::Ledger, postgres::PostgresStore};
//!
//! let store = PostgresStore::builder("postgres://app:secret@db:5432/app")
//!     .schema("locking")
//!     .build()
//!     .await?;
//! store.ensure_schema().await?;
//! let (locks, ledger) = (LockClient::new(store.clone()), Ledger::new(store));
//! # let _ = (locks, ledger); Ok(()) }
//! ```
//!
//! **Redis** (`features = ["redis"]`): one server or a Redis Cluster; keys
//! are made as locks are taken, nothing to create. `cargo run -p lockstore
//! --example redis --features redis`
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), lockstore::LockError> {
//! use std::sync::Arc;
//! use lockstore::{LockClient, ledger::Ledger, redis::RedisStore};
//!
//! let store = Arc::new(RedisStore::builder("redis://cache:6379").key_prefix("billing:").connect().await?);
//! let (locks, ledger) = (LockClient::from_arc(store.clone()), Ledger::from_arc(store));
//! # let _ = (locks, ledger); Ok(()) }
//! ```
//!
//! **DynamoDB** (`features = ["dynamodb"]`): one table holds locks and
//! ledger; credentials and region come from the AWS chain. `create_table`
//! makes it (on-demand, with the ledger's index and TTL) if missing.
//! `AWS_REGION=eu-west-1 cargo run -p lockstore --example dynamodb
//! --features dynamodb -- Locks`
//!
//! ```no_run
//! # #[cfg(feature = "dynamodb")]
//! # async fn example() -> Result<(), lockstore::LockError> {
//! use std::sync::Arc;
//! use lockstore::{LockClient, dynamodb::DynamoDbStore, ledger::Ledger};
//!
//! let store = Arc::new(DynamoDbStore::builder("Locks").region("eu-west-1").build().await?);
//! store.create_table().await?;
//! let (locks, ledger) = (LockClient::from_arc(store.clone()), Ledger::from_arc(store));
//! # let _ = (locks, ledger); Ok(()) }
//! ```
//!
//! **Memory** (the default feature): for unit tests and single-process
//! programs; with tokio's paused clock, expiry tests take no time.
//! `MemoryStore::namespace` gives independent sets of locks.
//!
//! The other examples are whole services: `nightly_etl` (a daily job on
//! SQLite that two schedulers start at once) and `queue_consumer` (an
//! at-least-once queue consumer that charges each order once).
//!
//! # Testing a service
//!
//! Write the service generic over `S: LockStore` (or `L: LedgerStore`), or
//! take an `Arc<dyn LockStore>`, and give it a [`memory::MemoryStore`] in
//! its unit tests; run them with `#[tokio::test(start_paused = true)]` to
//! let leases expire without waiting.
//!
//! # Crates
//!
//! This crate re-exports [`lockstore_api`] (the traits, the client layer
//! and the ledger) and the backends you enable: `lockstore-memory`,
//! `lockstore-sql` (SQLite and PostgreSQL), `lockstore-redis` and
//! `lockstore-dynamodb`. The command-line tool `lockctl` runs a command
//! under a lock, or once, on the same URLs.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use lockstore_api::*;

mod open;
pub use open::{OpenError, Store, open};

#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod lambda;

/// The in-process backend: for unit tests and single-process programs
/// (crate [`lockstore_memory`]).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    pub use lockstore_memory::MemoryStore;
}

/// The DynamoDB backend (feature `dynamodb`). Its table layout, clock-skew
/// allowance and skew-free mode are described in [`lockstore_dynamodb`].
#[cfg(feature = "dynamodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "dynamodb")))]
pub mod dynamodb {
    pub use lockstore_dynamodb::*;
}

/// The PostgreSQL backend (feature `postgres`). Its schema, privileges and
/// fence sequence are described in [`lockstore_sql`].
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use lockstore_sql::{
        PostgresStore, PostgresStoreBuilder, defaults, fenced_write, finish_in_transaction, sqlx,
    };
}

/// The SQLite backend (feature `sqlite`), the embedded default: one file
/// per host (crate [`lockstore_sql`]).
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite {
    pub use lockstore_sql::{
        SqliteStore, SqliteStoreBuilder, fenced_write, finish_in_transaction, sqlx,
    };
}

/// The Redis backend (feature `redis`), one server or a Redis Cluster. What
/// it assumes of failover and eviction is described in [`lockstore_redis`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use lockstore_redis::*;
}
