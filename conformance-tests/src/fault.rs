//! Store decorators for tests: counting the requests that reach a store,
//! cutting a holder off from its store (a partition) to watch its guard give
//! up in time, losing replies after the store acted, and a store that panics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::semaphore::{PermitOutcome, PermitRequest, Permits, SemaphoreStore};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, Holder, LeaseId, LockError, LockKey, LockStore, ReleaseOutcome,
    ReleaseSignal, RenewOutcome, Ttl,
};
use tokio::time::Instant;

use crate::cases::HANG;

/// What a counting decorator saw: every call, and the acquire attempts per
/// lease (or permit) id, one id per waiting acquire.
#[derive(Debug, Default)]
pub struct Counts {
    calls: AtomicU64,
    attempts: Mutex<HashMap<LeaseId, u64>>,
}

impl Counts {
    /// Calls made so far (acquire, renew, release and inspect).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// How many acquires (lease or permit ids) have tried at least once.
    pub fn tried(&self) -> usize {
        self.attempts().len()
    }

    /// How many acquires have tried more than once.
    pub fn asked_again(&self) -> usize {
        self.attempts().values().filter(|n| **n > 1).count()
    }

    /// Waits until `acquires` acquires have tried at least once.
    ///
    /// # Panics
    /// When they have not within the cases' hang bound (30 s).
    pub async fn until_tried(&self, acquires: usize) {
        let deadline = Instant::now() + HANG;
        while self.tried() < acquires {
            assert!(
                Instant::now() < deadline,
                "only {} of {acquires} waiters tried within {HANG:?}",
                self.tried()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn attempt(&self, id: LeaseId) {
        self.call();
        *self.lock().entry(id).or_default() += 1;
    }

    fn attempts(&self) -> HashMap<LeaseId, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, u64>> {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts every call that reaches the wrapped store.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn LockStore>,
    counts: Counts,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockStore>) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }

    /// What reached the store so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Calls made so far (acquire, renew, release and inspect).
    pub fn calls(&self) -> u64 {
        self.counts.calls()
    }
}

#[async_trait]
impl LockStore for CountingStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        self.counts.attempt(request.lease_id);
        self.inner.try_acquire(request).await
    }

    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.counts.call();
        self.inner.renew(key, id, ttl).await
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.counts.call();
        self.inner.release(key, id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        self.counts.call();
        self.inner.inspect(key).await
    }

    fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.inner.release_signal(key)
    }
}

/// Counts the calls that reach a semaphore store, and the acquire attempts
/// per permit id, as [`CountingStore`] does for locks.
#[derive(Debug)]
pub struct CountingSemaphores {
    inner: Arc<dyn SemaphoreStore>,
    counts: Counts,
}

impl CountingSemaphores {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SemaphoreStore>) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }

    /// What reached the store so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

#[async_trait]
impl SemaphoreStore for CountingSemaphores {
    fn semaphore_backend_name(&self) -> &'static str {
        self.inner.semaphore_backend_name()
    }

    async fn try_acquire_permit(
        &self,
        request: &PermitRequest,
    ) -> Result<PermitOutcome, LockError> {
        self.counts.attempt(request.permit_id);
        self.inner.try_acquire_permit(request).await
    }

    async fn renew_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        self.counts.call();
        self.inner.renew_permit(key, permit_id, ttl).await
    }

    async fn release_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
    ) -> Result<ReleaseOutcome, LockError> {
        self.counts.call();
        self.inner.release_permit(key, permit_id).await
    }

    async fn inspect_permits(&self, key: &LockKey) -> Result<Option<Permits>, LockError> {
        self.counts.call();
        self.inner.inspect_permits(key).await
    }

    fn permit_release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.inner.permit_release_signal(key)
    }
}

/// A holder's view of a store that can be cut off: while cut, renewals and
/// releases hang (as over a dead network) instead of reaching the store.
#[derive(Debug)]
pub struct PartitionableStore {
    inner: Arc<dyn LockStore>,
    cut: AtomicBool,
}

impl PartitionableStore {
    /// Wraps `inner`, connected.
    pub fn new(inner: Arc<dyn LockStore>) -> Self {
        Self {
            inner,
            cut: AtomicBool::new(false),
        }
    }

    /// From now on, requests hang forever.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// From now on, requests reach the store again (those sent while cut
    /// keep hanging).
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    async fn reach(&self) {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl LockStore for PartitionableStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        self.reach().await;
        self.inner.try_acquire(request).await
    }

    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.reach().await;
        self.inner.renew(key, id, ttl).await
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.reach().await;
        self.inner.release(key, id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        self.reach().await;
        self.inner.inspect(key).await
    }
}

/// A store whose replies get lost: each call reaches the wrapped store and
/// takes effect, then the caller gets a retryable error instead of the
/// answer — a reply dropped by the network after the server acted.
#[derive(Debug)]
pub struct FlakyStore {
    inner: Arc<dyn LockStore>,
    acquire_failures_left: AtomicU64,
}

impl FlakyStore {
    /// Wraps `inner`; the first `failed_acquires` acquires lose their reply
    /// (`u64::MAX`: all of them). Other calls pass through.
    pub fn new(inner: Arc<dyn LockStore>, failed_acquires: u64) -> Self {
        Self {
            inner,
            acquire_failures_left: AtomicU64::new(failed_acquires),
        }
    }

    fn lose_this_reply(&self) -> bool {
        self.acquire_failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

fn lost_reply() -> LockError {
    LockError::Backend {
        backend: "flaky",
        retryable: true,
        message: "the reply was lost after the request was applied".into(),
        source: None,
    }
}

#[async_trait]
impl LockStore for FlakyStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        let outcome = self.inner.try_acquire(request).await;
        if self.lose_this_reply() {
            return Err(lost_reply());
        }
        outcome
    }

    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.inner.renew(key, id, ttl).await
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.inner.release(key, id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        self.inner.inspect(key).await
    }
}

/// A store that panics on renewal, as a buggy store might: the guard's
/// background task dies with it.
#[derive(Debug)]
pub struct PanickingStore {
    inner: Arc<dyn LockStore>,
}

impl PanickingStore {
    /// Wraps `inner`; every renewal panics.
    pub fn new(inner: Arc<dyn LockStore>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl LockStore for PanickingStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        self.inner.try_acquire(request).await
    }

    async fn renew(&self, _: &LockKey, _: LeaseId, _: Ttl) -> Result<RenewOutcome, LockError> {
        panic!("PanickingStore: renewal panics (deliberately, in a test)")
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.inner.release(key, id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        self.inner.inspect(key).await
    }
}
