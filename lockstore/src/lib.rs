//! Leased distributed locks with fencing tokens, behind one trait.
//!
//! `lockstore` lets services on Lambda, Fargate, EC2 or Kubernetes make sure
//! a job (an ETL for one date, a deploy, a cron run, a queue message) does
//! not run twice at once. Write your service against [`LockStore`] (generic
//! `S: LockStore`, or `Arc<dyn LockStore>`), use the memory backend in its
//! unit tests, and pick the production backend with a cargo feature:
//!
//! | feature    | backend                        | clock that judges expiry |
//! |------------|--------------------------------|--------------------------|
//! | `memory` (default) | `memory::MemoryStore`, in-process | tokio's |
//! | `sqlite`   | `sqlite::SqliteStore`, one file per host | the host's |
//! | `postgres` | `postgres::PostgresStore`      | the PostgreSQL server's |
//! | `redis`    | `redis::RedisStore`            | the Redis server's |
//! | `dynamodb` | `dynamodb::DynamoDbStore`      | the clients' (a configurable skew allowance, or the skew-free mode) |
//!
//! # Example
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
//! To pick the backend from configuration instead, open it from a URL with
//! [`open`] (`sqlite:/var/lib/app/locks.db`, `postgres://…`, `redis://…`,
//! `dynamodb://Table?region=…`): it returns a [`Store`] with the lock store
//! and the execution ledger as trait objects.
//!
//! The rules every backend keeps — one live lease per key, ownership by a
//! secret lease id, strictly increasing fencing tokens, expiry by the
//! backend's clock — are described in [`lockstore_api`] and checked for every
//! backend by the shared conformance suite.

#![forbid(unsafe_code)]

pub use lockstore_api::*;

mod open;
pub use open::{OpenError, Store, open};

/// The in-process backend.
#[cfg(feature = "memory")]
pub mod memory {
    pub use lockstore_memory::MemoryStore;
}

/// The DynamoDB backend (feature `dynamodb`).
#[cfg(feature = "dynamodb")]
pub mod dynamodb {
    pub use lockstore_dynamodb::*;
}

/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use lockstore_sql::{PostgresStore, PostgresStoreBuilder, defaults};
}

/// The SQLite backend (feature `sqlite`), the embedded default.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use lockstore_sql::{SqliteStore, SqliteStoreBuilder};
}

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use lockstore_redis::*;
}
