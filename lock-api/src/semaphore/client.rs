//! The semaphore client layer: waiting, guards and `with_permit`, built on
//! the lock's own pieces — its backoff, attempt bounds and renewing guard.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::{Instrument, debug, info_span, warn};

use super::{PermitLimit, PermitOutcome, PermitRequest, Permits, SemaphoreStore};
use crate::client::{ATTEMPT_FLOOR, attempt_bound};
use crate::guard::GuardSettings;
use crate::telemetry;
use crate::wait_line::{Turn, WaitLines, Waited};
use crate::{
    AcquireOptions, AcquireOutcome, AcquireRequest, Backoff, FencingToken, Holder, Lease,
    LeaseHandle, LeaseId, LockError, LockGuard, LockKey, LockStore, OwnerLabel, ReleaseOutcome,
    RenewOutcome, Ttl, Wait,
};

/// Semaphores for applications: take a permit with or without waiting, hold
/// it under a renewing [`PermitGuard`], or run work under one with
/// [`Semaphore::with_permit`]. Cloning is cheap.
///
/// Set up like [`LockClient`](crate::LockClient): an owner label, a backoff,
/// a safety margin and a renewal rate, with the same defaults and checks.
#[derive(Debug)]
pub struct Semaphore<S: ?Sized + SemaphoreStore = dyn SemaphoreStore> {
    store: Arc<S>,
    owner: Option<OwnerLabel>,
    backoff: Backoff,
    guard: GuardSettings,
    /// The line of this client's waiters per key (shared by clones).
    lines: Arc<WaitLines>,
}

impl<S: ?Sized + SemaphoreStore> Clone for Semaphore<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            owner: self.owner.clone(),
            backoff: self.backoff,
            guard: self.guard,
            lines: Arc::clone(&self.lines),
        }
    }
}

impl<S: SemaphoreStore> Semaphore<S> {
    /// A client over `store`.
    pub fn new(store: S) -> Self {
        Self::from_arc(Arc::new(store))
    }
}

impl<S: ?Sized + SemaphoreStore> Semaphore<S> {
    /// A client over a shared store, such as an `Arc<dyn SemaphoreStore>`.
    pub fn from_arc(store: Arc<S>) -> Self {
        Self {
            store,
            owner: None,
            backoff: Backoff::default(),
            guard: GuardSettings::default(),
            lines: Arc::default(),
        }
    }

    /// Stores `owner` with every permit instead of the default
    /// `host/pid-N/task-M` of the acquiring task.
    pub fn with_owner(mut self, owner: OwnerLabel) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Uses `backoff` between attempts while waiting.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// As [`LockClient::with_safety_margin`](crate::LockClient::with_safety_margin).
    pub fn with_safety_margin(mut self, margin: Duration) -> Self {
        self.guard.safety_margin = Some(margin);
        self
    }

    /// As [`LockClient::with_renewals_per_ttl`](crate::LockClient::with_renewals_per_ttl).
    pub fn with_renewals_per_ttl(mut self, renewals: u32) -> Self {
        self.guard.renewals_per_ttl = renewals.max(2);
        self
    }

    /// As [`LockClient::with_metrics_namespace`](crate::LockClient::with_metrics_namespace).
    pub fn with_metrics_namespace(mut self, namespace: &'static str) -> Self {
        self.guard.namespace = namespace;
        self
    }

    /// The store behind this client.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Takes a permit of `key` (whose limit is `limit`) and returns a guard
    /// that renews it in the background until released or dropped.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when every permit stayed taken for the whole
    /// wait, naming the holder whose permit expires first;
    /// [`LockError::LimitMismatch`] when the key's live permits hold under
    /// another limit; input errors (key, TTL, safety margin) before any
    /// request; backend errors, as [`LockClient::acquire`](crate::LockClient::acquire).
    pub async fn acquire<K>(
        &self,
        key: K,
        limit: PermitLimit,
        options: AcquireOptions,
    ) -> Result<PermitGuard, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        if let Ok(ttl) = Ttl::new(options.ttl()) {
            self.guard.validate(ttl)?;
        }
        let renew_until = options.renewal_deadline();
        let lease = self.acquire_lease(key, limit, options).await?;
        let leases = Arc::new(PermitLeases(Arc::clone(&self.store)));
        Ok(PermitGuard {
            limit,
            inner: LockGuard::spawn(leases, lease, self.guard, renew_until),
        })
    }

    /// One attempt: a guard if a permit was free, `None` if all are taken.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`], but never `Timeout`.
    pub async fn try_acquire<K>(
        &self,
        key: K,
        limit: PermitLimit,
        ttl: Duration,
    ) -> Result<Option<PermitGuard>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        match self.acquire(key, limit, AcquireOptions::new(ttl)).await {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Runs `work` while holding a permit of `key`, then releases it, with
    /// the rules of [`LockClient::with_lock`](crate::LockClient::with_lock):
    /// work is dropped when the permit is lost, and work that finished past
    /// the local deadline is [`LockError::LeaseLost`].
    ///
    /// # Errors
    /// As [`Semaphore::acquire`], and [`LockError::LeaseLost`].
    pub async fn with_permit<K, F, Fut, T>(
        &self,
        key: K,
        limit: PermitLimit,
        options: AcquireOptions,
        work: F,
    ) -> Result<T, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire(key, limit, options).await?;
        guard.inner.run_then_end(work, Instant::now()).await
    }

    /// Takes a permit and returns it as a bare lease, with no background
    /// renewal: for callers that renew by themselves (a CLI). Renew and
    /// release it with [`Semaphore::renew`] and [`Semaphore::release`].
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    pub async fn acquire_lease<K>(
        &self,
        key: K,
        limit: PermitLimit,
        options: AcquireOptions,
    ) -> Result<Lease, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let ttl = Ttl::new(options.ttl())?;
        let request = PermitRequest {
            key,
            permit_id: LeaseId::random(),
            limit,
            ttl,
            owner: self.owner.clone().unwrap_or_else(OwnerLabel::for_this_task),
        };
        let labels = self.guard.labels(self.store.semaphore_backend_name());
        let span = info_span!("lockstore.permit.acquire", backend = labels.backend, namespace = labels.namespace, key = %request.key, limit = limit.get(), fence = tracing::field::Empty, attempts = tracing::field::Empty, outcome = tracing::field::Empty);
        let started = Instant::now();
        let wait = options.wait_policy();
        let result = self
            .acquire_loop(request, wait)
            .instrument(span.clone())
            .await;
        let outcome = telemetry::acquire_outcome(wait, &result);
        span.record("outcome", outcome);
        telemetry::permit_acquire(labels, outcome, started.elapsed());
        result
    }

    /// The lock's acquire loop, with permits: one permit id for every
    /// attempt (a retry after a lost reply finds its own grant), jittered
    /// backoff never sleeping past the first permit's expiry, wake-ups on
    /// release, and each attempt bounded as the lock's.
    async fn acquire_loop(&self, request: PermitRequest, wait: Wait) -> Result<Lease, LockError> {
        let started = Instant::now();
        let give_up_at = match wait {
            Wait::No => Some(started),
            Wait::Up(timeout) => started.checked_add(timeout),
            Wait::Forever => None,
        };
        let mut attempt = 0u32;
        let mut last_seen: Option<Permits> = None;
        // This task's place at the front of the key's line, once refused.
        let mut turn: Option<Turn> = None;
        loop {
            let signal = match wait {
                Wait::No => None,
                _ => self.store.permit_release_signal(&request.key),
            };
            let sent_at = Instant::now();
            let bound = attempt_bound(give_up_at, sent_at, request.ttl);
            let result = timeout(bound, self.store.try_acquire_permit(&request))
                .await
                .unwrap_or_else(|_| Err(no_answer(&request.key, bound)));
            let failure = match result {
                Ok(PermitOutcome::Granted { fence }) => {
                    let span = tracing::Span::current();
                    span.record("fence", fence.get());
                    span.record("attempts", attempt + 1);
                    debug!("permit granted");
                    return Ok(Lease::new(
                        request.key,
                        request.permit_id,
                        fence,
                        request.ttl,
                        request.owner,
                        sent_at,
                    )
                    .with_safety_margin(self.guard.margin(request.ttl)));
                }
                Ok(PermitOutcome::Refused(permits)) => {
                    last_seen = Some(permits);
                    None
                }
                Err(err) if err.is_retryable() => Some(err),
                Err(err) => {
                    self.release_unseen_grant(&request).await;
                    return Err(err);
                }
            };
            let now = Instant::now();
            if give_up_at.is_some_and(|give_up_at| now >= give_up_at) {
                if failure.is_some() {
                    self.release_unseen_grant(&request).await;
                }
                return Err(match (last_seen, failure) {
                    (None, Some(err)) => err,
                    (seen, failure) => LockError::Timeout {
                        key: request.key,
                        waited: started.elapsed(),
                        holder: seen.and_then(|permits| permits.holders.into_iter().next()),
                        last_error: failure.map(Box::new),
                    },
                });
            }
            if let Some(err) = &failure {
                warn!(error = %err, attempt, "permit acquire failed; retrying with the same permit id");
            }
            let mut delay = self.backoff.delay(attempt);
            if failure.is_none()
                && let Some(first_expiry) = last_seen.as_ref().and_then(Permits::next_expiry)
            {
                // No point sleeping past the moment a permit can be taken.
                delay = delay.min(first_expiry + Duration::from_millis(1));
            }
            if let Some(give_up_at) = give_up_at {
                delay = delay.min(give_up_at - now);
            }
            attempt = attempt.saturating_add(1);
            if turn.is_none() && failure.is_none() {
                // Refused: wait behind this client's other waiters of the
                // key, as the lock's waiters do.
                let joined = self.lines.join(request.key.as_str());
                let (front, waited) = match give_up_at {
                    Some(give_up_at) => match timeout_at(give_up_at, joined).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            return Err(LockError::Timeout {
                                key: request.key,
                                waited: started.elapsed(),
                                holder: last_seen
                                    .and_then(|permits| permits.holders.into_iter().next()),
                                last_error: None,
                            });
                        }
                    },
                    None => joined.await,
                };
                turn = Some(front);
                if waited == Waited::Yes {
                    // The waiters ahead are done: ask again at once.
                    continue;
                }
            }
            match signal {
                Some(signal) => {
                    tokio::select! {
                        () = signal => {},
                        () = sleep(delay) => {},
                    }
                }
                None => sleep(delay).await,
            }
        }
    }

    /// As the lock's: a grant whose reply was lost is released by its id.
    async fn release_unseen_grant(&self, request: &PermitRequest) {
        let bound = request.ttl.as_duration().min(ATTEMPT_FLOOR);
        let release = self.store.release_permit(&request.key, request.permit_id);
        match timeout(bound, release).await {
            Ok(Ok(outcome)) => debug!(?outcome, "released a permit whose reply was lost"),
            Ok(Err(err)) => {
                warn!(error = %err, "could not release a permit whose reply may have been lost; it expires by its TTL")
            }
            Err(_) => warn!("release of a permit whose reply may have been lost got no answer"),
        }
    }

    /// Renews a bare permit for its TTL from now.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the permit is no longer live; backend
    /// errors.
    pub async fn renew(&self, permit: &Lease) -> Result<Lease, LockError> {
        let sent_at = Instant::now();
        match self
            .store
            .renew_permit(permit.key(), permit.id(), permit.ttl())
            .await?
        {
            RenewOutcome::Renewed => Ok(permit.renewed(permit.ttl(), sent_at)),
            RenewOutcome::Lost => Err(LockError::LeaseLost {
                key: permit.key().clone(),
                fence: permit.fence(),
            }),
        }
    }

    /// Releases a bare permit; twice, or after expiry, is
    /// [`ReleaseOutcome::NotHeld`] and not an error.
    ///
    /// # Errors
    /// Backend errors only.
    pub async fn release(&self, permit: &Lease) -> Result<ReleaseOutcome, LockError> {
        self.store.release_permit(permit.key(), permit.id()).await
    }

    /// The live permits of `key`: its limit and holders, if any.
    ///
    /// # Errors
    /// A bad key; backend errors.
    pub async fn inspect<K>(&self, key: K) -> Result<Option<Permits>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        self.store.inspect_permits(&key).await
    }
}

/// A held permit. Renews in the background, tells you when it is lost, and
/// releases on [`PermitGuard::release`] — or, best effort, when dropped.
/// It is the lock's [`LockGuard`] over the permit's lease: loss is judged
/// by the local deadline on every look, as described there.
#[derive(Debug)]
#[must_use = "dropping a guard releases the permit"]
pub struct PermitGuard {
    limit: PermitLimit,
    inner: LockGuard,
}

impl PermitGuard {
    /// The semaphore's key.
    pub fn key(&self) -> &LockKey {
        self.inner.key()
    }

    /// The limit the permit was granted under.
    pub fn limit(&self) -> PermitLimit {
        self.limit
    }

    /// The fencing token: pass it to whatever the permit protects.
    pub fn fence(&self) -> FencingToken {
        self.inner.fence()
    }

    /// The secret permit id.
    pub fn permit_id(&self) -> LeaseId {
        self.inner.lease_id()
    }

    /// The permit's lease as of the last successful renewal.
    pub fn lease(&self) -> Lease {
        self.inner.lease()
    }

    /// The last instant this guard trusts its permit.
    pub fn trusted_until(&self) -> Instant {
        self.inner.trusted_until()
    }

    /// Whether the permit is lost, as [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.inner.is_lost()
    }

    /// The fencing token while the permit is trusted, as [`LockGuard::check`].
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] once the permit is lost.
    pub fn check(&self) -> Result<FencingToken, LockError> {
        self.inner.check()
    }

    /// Resolves when the permit is lost, as [`LockGuard::lost`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        self.inner.lost()
    }

    /// A handle with the key, fence and loss signal for work under the permit.
    pub fn handle(&self) -> LeaseHandle {
        self.inner.handle()
    }

    /// Stops renewing and releases the permit.
    ///
    /// # Errors
    /// Backend errors. A permit already lost answers [`ReleaseOutcome::NotHeld`].
    pub async fn release(self) -> Result<ReleaseOutcome, LockError> {
        self.inner.release().await
    }
}

/// The permits of one store seen as leases, so the lock's guard renews and
/// releases them unchanged. Only renewal and release are ever called on it.
#[derive(Debug)]
struct PermitLeases<S: ?Sized>(Arc<S>);

#[async_trait]
impl<S: ?Sized + SemaphoreStore> LockStore for PermitLeases<S> {
    fn backend_name(&self) -> &'static str {
        self.0.semaphore_backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        Err(LockError::InvalidArgument {
            name: "request",
            reason: format!(
                "{} is a semaphore permit; take permits through Semaphore",
                request.key
            ),
        })
    }

    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.0.renew_permit(key, id, ttl).await
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.0.release_permit(key, id).await
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        let permits = self.0.inspect_permits(key).await?;
        Ok(permits.and_then(|permits| permits.holders.into_iter().next()))
    }
}

fn no_answer(key: &LockKey, bound: Duration) -> LockError {
    LockError::Backend {
        backend: "client",
        retryable: true,
        message: format!(
            "permit acquire of {key} got no answer within {bound:?}; the backend may still have granted it"
        ),
        source: None,
    }
}
