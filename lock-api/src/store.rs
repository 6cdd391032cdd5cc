//! The [`LockStore`] trait: the small core every backend implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;

use crate::{FencingToken, Holder, LeaseId, LockError, LockKey, OwnerLabel, Ttl};

/// One attempt to take a key, as sent to a backend.
///
/// The lease id is made by the client, not the backend: a request retried
/// after a timeout carries the same id, so the backend can recognise its own
/// earlier grant instead of handing the key to a second holder.
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    /// The key to take.
    pub key: LockKey,
    /// The id the new lease will have.
    pub lease_id: LeaseId,
    /// How long the lease lives unless renewed.
    pub ttl: Ttl,
    /// Who is asking, stored with the lease for [`Holder`] reports.
    pub owner: OwnerLabel,
}

/// The answer to [`LockStore::try_acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The key is now held under the request's lease id with this token.
    Acquired {
        /// The fencing token of the new lease (or of the existing one, when
        /// the same lease id already held the key).
        fence: FencingToken,
    },
    /// Someone else holds the key.
    Held(Holder),
}

/// The answer to [`LockStore::renew`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease now lives for the new TTL from the backend's "now".
    Renewed,
    /// The lease id does not hold the key (it expired, was taken over,
    /// released, or never existed). Nothing was changed.
    Lost,
}

/// The answer to [`LockStore::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lease was live and is now gone.
    Released,
    /// The lease id did not hold the key; nothing was changed. Releasing
    /// twice, or after expiry, lands here, and that is not an error.
    NotHeld,
}

/// A storage backend for leased locks.
///
/// This is the whole of what a backend must do: four operations, each one
/// atomic step on the backend and, where the backend allows, one round trip.
/// Waiting, backoff, renewal in the background and guards are built once on
/// top, in [`LockClient`](crate::LockClient).
///
/// Every implementation keeps the promises of the lock contract (mutual
/// exclusion, ownership by lease id, strictly increasing fencing tokens,
/// expiry by the backend's clock, idempotent release); the
/// `lockstore-conformance` suite checks them.
///
/// The trait is object safe: `Arc<dyn LockStore>` works everywhere a
/// concrete store does.
#[async_trait]
pub trait LockStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and traces: `"memory"`, `"redis"`, ….
    fn backend_name(&self) -> &'static str;

    /// Takes the key if it is free, expired, or already held by
    /// `request.lease_id` (then the lease is refreshed for `request.ttl` and
    /// keeps its token). Otherwise reports the current holder.
    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError>;

    /// Extends the lease `lease_id` on `key` to `ttl` from now, if it is still
    /// the live lease. Keeps the fencing token.
    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError>;

    /// Ends the lease `lease_id` on `key` if it is still live.
    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError>;

    /// Who holds `key` right now, if anyone.
    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError>;

    /// Subscribes to the next release of `key`, for backends that can tell
    /// (an in-process notify, Redis pub/sub, PostgreSQL `LISTEN`).
    ///
    /// The client calls this *before* an acquire attempt and waits on the
    /// signal after a refusal, so a release between the two is not missed.
    /// The default, `None`, means waiters poll with backoff.
    ///
    /// A backend may announce only the releases someone waits for: while a
    /// signal for `key` is held, `try_acquire` of that key tells the backend
    /// that the caller waits, and a refusal then asks the holder's release
    /// to notify (Redis and PostgreSQL do this, so a release nobody waits
    /// for costs no `PUBLISH` or `NOTIFY`). The signal is therefore
    /// promised for the release of a lease that refused an attempt made
    /// while the signal was held, which is how the client uses it.
    fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let _ = key;
        None
    }
}

/// Resolves when a key is released, or when the backend cannot promise to
/// tell any more (its listener connection dropped): waking early is harmless,
/// since the waiter just tries again.
pub struct ReleaseSignal(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl ReleaseSignal {
    /// Wraps a future that completes on the next release.
    pub fn new(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }
}

impl Future for ReleaseSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ReleaseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseSignal")
    }
}
