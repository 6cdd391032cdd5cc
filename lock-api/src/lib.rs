//! The core of [lockstore]: the [`LockStore`] trait every backend implements,
//! the lease and fencing-token types, errors, and the client layer built once
//! on top ([`LockClient`], [`LockGuard`]).
//!
//! # The model
//!
//! A lock is a **lease**: a key held for a TTL by whoever presents its secret
//! [`LeaseId`]. A lease that is not renewed expires and the key can be taken
//! over, so a crashed holder never blocks others for longer than one TTL.
//!
//! Because a holder can be paused (GC, swapped out, a slow network) past its
//! lease without knowing, every acquisition also hands out a [`FencingToken`]
//! that strictly increases per key. Give it to the resource the lock
//! protects and let that resource refuse tokens older than the newest it has
//! seen; that turns "probably exclusive" into "safe".
//!
//! Expiry is judged by the backend's clock where it has one (Redis,
//! PostgreSQL, the SQLite host). The client never trusts a lease beyond
//! `request sent + TTL − safety margin` on its own monotonic clock.
//!
//! # The layers
//!
//! * [`LockStore`] — four operations a backend implements: `try_acquire`,
//!   `renew`, `release`, `inspect` (plus an optional release notification).
//! * [`LockClient`] — waiting with jittered backoff, guards that renew in the
//!   background, [`LockClient::with_lock`], and bare leases.
//! * [`ledger`] — the execution ledger ("run once") on the same backends:
//!   [`ledger::LedgerStore`] for backends, [`ledger::Ledger`] for callers.
//! * [`election`] — leader election with fenced terms, on any store
//!   ([`LockClient::election`]).
//! * [`semaphore`] — at most N leased, fenced permits per key:
//!   [`semaphore::SemaphoreStore`] for backends, [`semaphore::Semaphore`]
//!   for callers.
//! * [`schedule`] — a scheduled job that fires on every replica runs once
//!   per tick ([`LockClient::run_tick`]).
//! * [`telemetry`] — the metrics the client layer records with the
//!   `metrics` feature: names, types, units and labels.
//!
//! ```
//! # use lockstore_api::*;
//! # async fn demo(client: LockClient) -> Result<(), LockError> {
//! use std::time::Duration;
//!
//! let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(5));
//! let rows = client
//!     .with_lock("etl/2026-11-23", options, |lease| async move {
//!         // write with lease.fence() so a stale writer is refused
//!         42
//!     })
//!     .await?;
//! # let _ = rows; Ok(()) }
//! ```
//!
//! [lockstore]: https://docs.rs/lockstore

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod client;
pub mod election;
mod error;
mod guard;
mod key;
mod lease;
pub mod ledger;
pub mod schedule;
pub mod semaphore;
mod store;
pub mod telemetry;
#[cfg(test)]
mod test_store;
mod wait_line;

pub use async_trait::async_trait;
pub use backoff::Backoff;
pub use client::{AcquireOptions, LockClient, Wait};
pub use error::{BoxError, LockError, UnexpectedReply};
pub use guard::{LeaseHandle, LockGuard};
pub use key::LockKey;
pub use lease::{FencingToken, Holder, Lease, LeaseId, OwnerLabel, Ttl};
pub use store::{
    AcquireOutcome, AcquireRequest, LockStore, ReleaseOutcome, ReleaseSignal, RenewOutcome,
};
pub use tokio_util::sync::CancellationToken;
