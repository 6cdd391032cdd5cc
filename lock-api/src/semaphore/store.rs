//! The [`SemaphoreStore`] trait: what a backend does for semaphores.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    FencingToken, Holder, LeaseId, LockError, LockKey, OwnerLabel, ReleaseOutcome, ReleaseSignal,
    RenewOutcome, Ttl,
};

/// How many permits of a key may be live at once: `1..=`[`PermitLimit::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PermitLimit(u32);

impl PermitLimit {
    /// The largest limit. Backends keep a key's permits together (one Redis
    /// hash, one DynamoDB item), so the bound keeps every request small.
    pub const MAX: u32 = 1024;

    /// A limit of `limit` permits.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] for 0 or more than [`PermitLimit::MAX`].
    pub fn new(limit: u32) -> Result<Self, LockError> {
        if (1..=Self::MAX).contains(&limit) {
            Ok(Self(limit))
        } else {
            Err(LockError::InvalidArgument {
                name: "limit",
                reason: format!(
                    "a semaphore limit of {limit} is out of range: use 1 to {} permits",
                    Self::MAX
                ),
            })
        }
    }

    /// The number of permits.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for PermitLimit {
    type Error = LockError;

    fn try_from(limit: u32) -> Result<Self, LockError> {
        Self::new(limit)
    }
}

impl fmt::Display for PermitLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One attempt to take a permit, as sent to a backend.
///
/// The permit id is made by the client: a request retried after a timeout
/// carries the same id and finds its own earlier grant, so it never takes
/// two permits.
#[derive(Clone, Debug)]
pub struct PermitRequest {
    /// The semaphore's key.
    pub key: LockKey,
    /// The id the new permit will have.
    pub permit_id: LeaseId,
    /// The key's limit, as this client knows it.
    pub limit: PermitLimit,
    /// How long the permit lives unless renewed.
    pub ttl: Ttl,
    /// Who is asking, stored with the permit for [`Holder`] reports.
    pub owner: OwnerLabel,
}

/// The live permits of a key: its limit and who holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permits {
    /// The limit the live permits were granted under.
    pub limit: u32,
    /// The live permits, soonest to expire first: owner, fence, time left.
    pub holders: Vec<Holder>,
}

impl Permits {
    /// The live permits, sorted soonest to expire first (then by fence), as
    /// backends report them.
    pub fn new(limit: u32, mut holders: Vec<Holder>) -> Self {
        holders.sort_by_key(|holder| (holder.expires_in(), holder.fence()));
        Self { limit, holders }
    }

    /// How many permits are free now.
    pub fn free(&self) -> u32 {
        let held = u32::try_from(self.holders.len()).unwrap_or(u32::MAX);
        self.limit.saturating_sub(held)
    }

    /// The time until the first permit frees itself, if any is held.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.holders.iter().map(Holder::expires_in).min()
    }
}

/// The answer to [`SemaphoreStore::try_acquire_permit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermitOutcome {
    /// A permit is now held under the request's permit id with this token
    /// (or was already: a retried request keeps its grant and token).
    Granted {
        /// The fencing token of the permit.
        fence: FencingToken,
    },
    /// Every permit is taken: who holds them, in the same reply.
    Refused(Permits),
}

/// A storage backend for semaphores: leased, fenced permits, at most
/// `limit` live per key.
///
/// Like [`LockStore`](crate::LockStore), it is the whole of what a backend
/// does; waiting, guards and renewal live once in [`Semaphore`](super::Semaphore).
/// Each operation is one atomic step on the backend. A key's semaphore and
/// the lock of the same key are independent.
///
/// Promises (checked by `lockstore-conformance`'s `semaphore_suite!`): at
/// most `limit` unexpired permits per key by the backend's clock; renew and
/// release by permit id only; fences strictly increase per key across
/// every grant, through release, expiry and restart, under the same
/// conditions as the backend's lock fences; a request whose limit differs
/// from the live permits' is [`LockError::LimitMismatch`]; an expired permit
/// is taken by the next acquirer in the same request.
#[async_trait]
pub trait SemaphoreStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and traces.
    fn semaphore_backend_name(&self) -> &'static str;

    /// Grants a permit if fewer than `limit` are live (expired ones do not
    /// count, and are dropped), or refreshes the permit `request.permit_id`
    /// if it is already live (keeping its token). Otherwise reports the
    /// holders.
    ///
    /// # Errors
    /// [`LockError::LimitMismatch`] when live permits hold under another
    /// limit; backend errors.
    async fn try_acquire_permit(&self, request: &PermitRequest)
    -> Result<PermitOutcome, LockError>;

    /// Extends the permit `permit_id` of `key` to `ttl` from now, if it is
    /// still live. Keeps the fencing token.
    async fn renew_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError>;

    /// Ends the permit `permit_id` of `key` if it is still live.
    async fn release_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
    ) -> Result<ReleaseOutcome, LockError>;

    /// The live permits of `key`, if any.
    async fn inspect_permits(&self, key: &LockKey) -> Result<Option<Permits>, LockError>;

    /// Subscribes to the next permit release of `key`, for backends that
    /// can tell, with the same rules as
    /// [`LockStore::release_signal`](crate::LockStore::release_signal): the
    /// client subscribes before an attempt and waits after a refusal. The
    /// default, `None`, means waiters poll with backoff.
    fn permit_release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let _ = key;
        None
    }
}
