//! Semaphores: at most N leased, fenced permits per key.
//!
//! A lock is one permit; a semaphore lets up to `limit` holders in at once —
//! an API with a rate budget, a warehouse that takes four loaders, a lane of
//! a workflow. Each permit is a lease exactly like a lock's: a secret permit
//! id (a [`LeaseId`](crate::LeaseId)) that alone can renew or release it, a
//! TTL after which it frees itself (a crashed holder's permit comes back
//! within one TTL, no sweeper needed), and a [`FencingToken`](crate::FencingToken)
//! that strictly increases per key across **every** permit ever granted, so
//! a resource can refuse a holder that was paused past its lease.
//!
//! # The limit
//!
//! A key's limit is `1..=`[`PermitLimit::MAX`]. Every client of a key must
//! use the same limit while the key has live permits: a request with another
//! limit gets [`LockError::LimitMismatch`](crate::LockError::LimitMismatch),
//! naming both, and nothing is granted. Once no permit of the key is live,
//! the next grant sets the limit afresh (a deploy may change it).
//!
//! # The layers
//!
//! As for locks: [`SemaphoreStore`] is the small core a backend implements
//! (acquire a permit, renew, release, inspect, an optional release
//! notification), and [`Semaphore`] is the client layer written once on top:
//! waiting with backoff, wake-ups on release where the backend notifies,
//! [`PermitGuard`]s that renew in the background and judge loss by their
//! local deadline (the lock's own guard machinery), and
//! [`Semaphore::with_permit`].
//!
//! One acquisition takes one permit; taking `k` at once is not offered.
//!
//! ```
//! # use lockstore_api::semaphore::*;
//! # use lockstore_api::*;
//! # async fn demo(lanes: Semaphore) -> Result<(), LockError> {
//! use std::time::Duration;
//!
//! let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(5));
//! let limit = PermitLimit::new(4)?;
//! let sent = lanes
//!     .with_permit("lanes/bulk", limit, options, |permit| async move {
//!         // at most 4 of these run at once; write with permit.fence()
//!         permit.fence().get()
//!     })
//!     .await?;
//! # let _ = sent; Ok(()) }
//! ```

mod client;
mod store;

pub use client::{PermitGuard, Semaphore};
pub use store::{PermitLimit, PermitOutcome, PermitRequest, Permits, SemaphoreStore};
