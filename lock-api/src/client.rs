//! The client layer: waiting, backoff, leases and guards, written once for
//! every backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::{Instrument, debug, info_span, warn};

use crate::guard::{GuardSettings, LeaseHandle, LockGuard};
use crate::telemetry;
use crate::wait_line::{Turn, WaitLines, Waited};
use crate::{
    AcquireOutcome, AcquireRequest, Backoff, Holder, Lease, LeaseId, LockError, LockKey, LockStore,
    OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl,
};

/// How long [`LockClient::acquire`] waits for a held key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// One attempt; fail with [`LockError::Timeout`] if the key is held.
    No,
    /// Retry until the key is free or this much time has passed.
    Up(Duration),
    /// Retry until the key is free.
    Forever,
}

/// What to ask for when acquiring: the lease TTL and how long to wait.
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::AcquireOptions;
///
/// let options = AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(5));
/// # let _ = options;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireOptions {
    ttl: Duration,
    wait: Wait,
    renew_until: Option<Instant>,
}

impl AcquireOptions {
    /// A lease of `ttl`, no waiting. The TTL is validated when used, so a bad
    /// one is a [`LockError::InvalidTtl`] from the acquire call.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            wait: Wait::No,
            renew_until: None,
        }
    }

    /// Never renew the lease past `deadline`: a renewal asks for at most
    /// the time left until it, none is sent once it has passed, and the
    /// guard reports the lease lost when the last one runs out (a safety
    /// margin before `deadline`). The backend then frees the key by
    /// `deadline` — or one TTL after the acquire, if that was less than a
    /// TTL before `deadline` (the first request asks for the full TTL).
    ///
    /// For work with a hard end of its own: a Lambda invocation's deadline,
    /// a pod's termination grace period. A process killed at that end,
    /// or frozen with a guard still alive, does not keep the key held past
    /// it. A hold at the end ([`LockGuard::release_after`]) is capped the
    /// same way.
    pub fn renew_until(mut self, deadline: impl Into<Instant>) -> Self {
        self.renew_until = Some(deadline.into());
        self
    }

    /// Wait as `wait` says.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Wait up to `timeout` for the key.
    pub fn wait_up_to(self, timeout: Duration) -> Self {
        self.wait(Wait::Up(timeout))
    }

    /// Wait as long as it takes.
    pub fn wait_forever(self) -> Self {
        self.wait(Wait::Forever)
    }

    /// The requested TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The waiting policy.
    pub fn wait_policy(&self) -> Wait {
        self.wait
    }

    /// The instant past which the lease is not renewed, if any.
    pub fn renewal_deadline(&self) -> Option<Instant> {
        self.renew_until
    }
}

/// The lock API for applications: acquire with or without waiting, renewing
/// guards, `with_lock`, and plain leases for callers that renew themselves.
///
/// Works over a concrete store (`LockClient<MemoryStore>`) or a trait object
/// (`LockClient<dyn LockStore>`, the default type parameter). Cloning is cheap.
///
/// Share one client (or its clones) among the tasks of a process: its
/// waiters of a key wait in one line, and only the one at the front asks
/// the store, so a release of a hot key costs a few requests rather than
/// one per waiting task (see CONTRACT.md, "The client layer").
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::{AcquireOptions, LockClient};
/// # use lockstore_api::*;
/// # #[derive(Debug)] struct Nothing;
/// # #[async_trait::async_trait] impl LockStore for Nothing {
/// #   fn backend_name(&self) -> &'static str { "doc" }
/// #   async fn try_acquire(&self, _: &AcquireRequest) -> Result<AcquireOutcome, LockError> { Ok(AcquireOutcome::Acquired { fence: FencingToken::new(1) }) }
/// #   async fn renew(&self, _: &LockKey, _: LeaseId, _: Ttl) -> Result<RenewOutcome, LockError> { Ok(RenewOutcome::Renewed) }
/// #   async fn release(&self, _: &LockKey, _: LeaseId) -> Result<ReleaseOutcome, LockError> { Ok(ReleaseOutcome::Released) }
/// #   async fn inspect(&self, _: &LockKey) -> Result<Option<Holder>, LockError> { Ok(None) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), LockError> {
/// # let store = Nothing;
/// let client = LockClient::new(store);
/// let guard = client
///     .acquire("etl/2026-11-23", AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(10)))
///     .await?;
/// // Hand the fencing token to whatever the lock protects.
/// println!("running with fence {}", guard.fence());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockClient<S: ?Sized + LockStore = dyn LockStore> {
    store: Arc<S>,
    owner: Option<OwnerLabel>,
    backoff: Backoff,
    pub(crate) guard: GuardSettings,
    /// The line of this client's waiters per key (shared by clones).
    lines: Arc<WaitLines>,
}

impl<S: ?Sized + LockStore> Clone for LockClient<S> {
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

impl<S: LockStore> LockClient<S> {
    /// A client over `store`.
    pub fn new(store: S) -> Self {
        Self::from_arc(Arc::new(store))
    }
}

impl<S: ?Sized + LockStore> LockClient<S> {
    /// A client over a shared store, such as an `Arc<dyn LockStore>`.
    pub fn from_arc(store: Arc<S>) -> Self {
        Self {
            store,
            owner: None,
            backoff: Backoff::default(),
            guard: GuardSettings::default(),
            lines: Arc::default(),
        }
    }

    /// Stores `owner` with every lease instead of the default
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

    /// How long before `sent + TTL` a guard (and a bare lease's
    /// [`Lease::is_expired`]) stops trusting its lease; by default a tenth of
    /// the TTL. Cover the worst clock-rate difference and pause you expect
    /// between this process and the backend.
    ///
    /// It must be under half the TTL of every guard: a guard renews at least
    /// halfway through the trusted part of its lease, so a failed renewal can
    /// be retried. [`LockClient::acquire`] refuses a larger margin with
    /// [`LockError::InvalidArgument`] before sending anything.
    pub fn with_safety_margin(mut self, margin: Duration) -> Self {
        self.guard.safety_margin = Some(margin);
        self
    }

    /// Labels this client's metrics with `namespace` instead of `default`
    /// (see [`telemetry`](crate::telemetry)): a low-cardinality name for
    /// the part of the application the locks belong to, chosen once — never
    /// a key. Spans carry it too.
    pub fn with_metrics_namespace(mut self, namespace: &'static str) -> Self {
        self.guard.namespace = namespace;
        self
    }

    /// How many renewals a guard attempts per TTL (default 3, at least 2, so
    /// one failed renewal still leaves time for another).
    pub fn with_renewals_per_ttl(mut self, renewals: u32) -> Self {
        self.guard.renewals_per_ttl = renewals.max(2);
        self
    }

    /// The store behind this client.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The owner label set with [`LockClient::with_owner`], if any.
    pub fn owner(&self) -> Option<&OwnerLabel> {
        self.owner.as_ref()
    }

    /// Acquires `key` and returns a guard that renews the lease in the
    /// background until it is released or dropped.
    ///
    /// # Errors
    /// [`LockError::Timeout`] when the key stayed held for the whole wait
    /// (at once with [`Wait::No`]), naming the last holder seen; when no
    /// attempt saw a holder and the last one failed, that backend error
    /// (retryable ones are retried with the same lease id within the wait).
    /// One attempt lasts at most what is left of the wait, or two seconds
    /// (the TTL if shorter) when less is left, and never longer than the TTL;
    /// an attempt that got no answer is a retryable error. After an attempt
    /// whose answer was lost or unreadable, the grant it may have made is
    /// released by its lease id, best effort, before the call returns.
    /// Input errors for a bad key or TTL, and
    /// [`LockError::InvalidArgument`] for a safety margin of half the TTL or
    /// more (see [`LockClient::with_safety_margin`]).
    pub async fn acquire<K>(&self, key: K, options: AcquireOptions) -> Result<LockGuard, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        if let Ok(ttl) = Ttl::new(options.ttl) {
            self.guard.validate(ttl)?;
        }
        let lease = self.acquire_lease(key, options).await?;
        Ok(LockGuard::spawn(
            Arc::clone(&self.store),
            lease,
            self.guard,
            options.renew_until,
        ))
    }

    /// One attempt: a guard if the key was free, `None` if someone holds it.
    ///
    /// # Errors
    /// Input and backend errors, as [`LockClient::acquire`].
    pub async fn try_acquire<K>(
        &self,
        key: K,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        match self.acquire(key, AcquireOptions::new(ttl)).await {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Runs `work` while holding `key`, then releases it.
    ///
    /// `work` gets a [`LeaseHandle`] with the fencing token. If the lease is
    /// lost before `work` finishes, `work` is dropped at its next await point
    /// and the call fails with [`LockError::LeaseLost`]: work must not go on
    /// unprotected. Work that completes after the local deadline passed is
    /// reported the same way, its output dropped: it ran partly without the
    /// lock, so its writes must have been fenced. Call
    /// [`LeaseHandle::check`] before each write. A failed release after the work succeeded is only logged;
    /// the lease then ends by its TTL.
    ///
    /// # Errors
    /// As [`LockClient::acquire`], and [`LockError::LeaseLost`].
    pub async fn with_lock<K, F, Fut, T>(
        &self,
        key: K,
        options: AcquireOptions,
        work: F,
    ) -> Result<T, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire(key, options).await?;
        guard.run_then_end(work, Instant::now()).await
    }

    /// Acquires `key` and returns the bare lease, with no background renewal:
    /// for callers that renew by themselves (a CLI, a job runner).
    ///
    /// # Errors
    /// As [`LockClient::acquire`].
    pub async fn acquire_lease<K>(
        &self,
        key: K,
        options: AcquireOptions,
    ) -> Result<Lease, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let ttl = Ttl::new(options.ttl)?;
        let labels = self.guard.labels(self.store.backend_name());
        let span = info_span!("lockstore.acquire", backend = labels.backend, namespace = labels.namespace, %key, fence = tracing::field::Empty, attempts = tracing::field::Empty, outcome = tracing::field::Empty);
        let started = Instant::now();
        let result = self
            .acquire_loop(key, ttl, options.wait)
            .instrument(span.clone())
            .await;
        let outcome = telemetry::acquire_outcome(options.wait, &result);
        span.record("outcome", outcome);
        let waited = result.as_ref().ok().map(|lease| lease.sent_at() - started);
        telemetry::acquire(labels, outcome, started.elapsed(), waited);
        result
    }

    async fn acquire_loop(&self, key: LockKey, ttl: Ttl, wait: Wait) -> Result<Lease, LockError> {
        let started = Instant::now();
        let give_up_at = match wait {
            Wait::No => Some(started),
            Wait::Up(timeout) => Some(started.checked_add(timeout).unwrap_or_else(far_future)),
            Wait::Forever => None,
        };
        // One id for every attempt: a retry after a lost reply then finds its
        // own grant instead of leaving an orphan lease behind.
        let request = AcquireRequest {
            key,
            lease_id: LeaseId::random(),
            ttl,
            owner: self.owner.clone().unwrap_or_else(OwnerLabel::for_this_task),
        };
        let mut attempt = 0u32;
        let mut last_holder = None;
        // This task's place at the front of the key's line, once refused.
        let mut turn: Option<Turn> = None;
        loop {
            let signal = match wait {
                Wait::No => None,
                _ => self.store.release_signal(&request.key),
            };
            let sent_at = Instant::now();
            let bound = attempt_bound(give_up_at, sent_at, ttl);
            let result = timeout(bound, self.store.try_acquire(&request))
                .await
                .unwrap_or_else(|_| Err(no_answer(&request.key, bound)));
            let (holder, failure) = match result {
                Ok(AcquireOutcome::Acquired { fence }) => {
                    let span = tracing::Span::current();
                    span.record("fence", fence.get());
                    span.record("attempts", attempt + 1);
                    debug!("acquired");
                    return Ok(Lease::new(
                        request.key,
                        request.lease_id,
                        fence,
                        ttl,
                        request.owner,
                        sent_at,
                    )
                    .with_safety_margin(self.guard.margin(ttl)));
                }
                Ok(AcquireOutcome::Held(holder)) => {
                    last_holder = Some(holder.clone());
                    (Some(holder), None)
                }
                Err(err) if err.is_retryable() => (None, Some(err)),
                Err(err) => {
                    self.release_unseen_grant(&request, ttl).await;
                    return Err(err);
                }
            };
            let now = Instant::now();
            if give_up_at.is_some_and(|give_up_at| now >= give_up_at) {
                return Err(match failure {
                    Some(err) => {
                        self.release_unseen_grant(&request, ttl).await;
                        match last_holder {
                            Some(holder) => {
                                self.timed_out(request.key, started, Some(holder), Some(err))
                            }
                            None => err,
                        }
                    }
                    None => self.timed_out(request.key, started, holder, None),
                });
            }
            if let Some(err) = &failure {
                warn!(error = %err, attempt, "acquire failed; retrying with the same lease id");
            }
            let mut delay = self.backoff.delay(attempt);
            if let Some(holder) = &holder {
                // No point sleeping past the moment the lease can be taken over.
                delay = delay.min(holder.expires_in() + Duration::from_millis(1));
            }
            if let Some(give_up_at) = give_up_at {
                delay = delay.min(give_up_at - now);
            }
            attempt = attempt.saturating_add(1);
            if turn.is_none() && holder.is_some() {
                // Refused: wait behind this client's other waiters of the
                // key, if any, rather than all asking at every release.
                let joined = self.lines.join(request.key.as_str());
                let (front, waited) = match give_up_at {
                    Some(give_up_at) => match timeout_at(give_up_at, joined).await {
                        Ok(joined) => joined,
                        Err(_) => return Err(self.timed_out(request.key, started, holder, None)),
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

    /// After an attempt whose answer never arrived or could not be read, the
    /// backend may have granted the lease anyway: release it by its id so
    /// the key is not held for a whole TTL by a lease nobody knows. Best
    /// effort and bounded; releasing a lease never granted is harmless.
    async fn release_unseen_grant(&self, request: &AcquireRequest, ttl: Ttl) {
        let bound = ttl.as_duration().min(ATTEMPT_FLOOR);
        match timeout(bound, self.store.release(&request.key, request.lease_id)).await {
            Ok(Ok(outcome)) => debug!(?outcome, "released a grant whose reply was lost"),
            Ok(Err(err)) => {
                warn!(error = %err, "could not release a grant whose reply may have been lost; it expires by its TTL")
            }
            Err(_) => {
                warn!(
                    ?bound,
                    "release of a grant whose reply may have been lost got no answer; it expires by its TTL"
                )
            }
        }
    }

    fn timed_out(
        &self,
        key: LockKey,
        started: Instant,
        holder: Option<Holder>,
        last_error: Option<LockError>,
    ) -> LockError {
        debug!(holder = ?holder, "gave up waiting");
        LockError::Timeout {
            key,
            waited: started.elapsed(),
            holder,
            last_error: last_error.map(Box::new),
        }
    }

    /// Renews a bare lease for its TTL from now, returning the renewed lease.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the lease no longer holds its key;
    /// backend errors.
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, LockError> {
        let labels = self.guard.labels(self.store.backend_name());
        let span = info_span!("lockstore.renew", backend = labels.backend, namespace = labels.namespace, key = %lease.key(), fence = lease.fence().get(), outcome = tracing::field::Empty);
        async {
            let sent_at = Instant::now();
            let answer = self.store.renew(lease.key(), lease.id(), lease.ttl()).await;
            let label = telemetry::renew_outcome(&answer);
            tracing::Span::current().record("outcome", label);
            telemetry::renewal(labels, label);
            match answer? {
                RenewOutcome::Renewed => Ok(lease.renewed(lease.ttl(), sent_at)),
                RenewOutcome::Lost => Err(LockError::LeaseLost {
                    key: lease.key().clone(),
                    fence: lease.fence(),
                }),
            }
        }
        .instrument(span)
        .await
    }

    /// Releases a bare lease. Releasing twice, or after expiry, answers
    /// [`ReleaseOutcome::NotHeld`] and is not an error.
    ///
    /// # Errors
    /// Backend errors only.
    pub async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome, LockError> {
        let span = info_span!("lockstore.release", backend = self.store.backend_name(), key = %lease.key(), fence = lease.fence().get(), outcome = tracing::field::Empty);
        async {
            let outcome = self.store.release(lease.key(), lease.id()).await?;
            tracing::Span::current().record("outcome", tracing::field::debug(outcome));
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Who holds `key` now, if anyone.
    ///
    /// # Errors
    /// A bad key; backend errors.
    pub async fn inspect<K>(&self, key: K) -> Result<Option<Holder>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        self.store.inspect(&key).await
    }
}

/// The least time one acquire attempt gets (less if the TTL is shorter),
/// even when the caller's wait is shorter or zero: a single attempt must be
/// able to reach a slow or loaded backend at all, and a timed-out attempt
/// costs a release.
pub(crate) const ATTEMPT_FLOOR: Duration = Duration::from_secs(2);

/// How long one acquire attempt may take: what is left of the caller's wait
/// (at least [`ATTEMPT_FLOOR`]), and never more than the TTL — a grant that
/// arrives after its TTL is worthless to the holder anyway.
pub(crate) fn attempt_bound(give_up_at: Option<Instant>, now: Instant, ttl: Ttl) -> Duration {
    let ttl = ttl.as_duration();
    let floor = ttl.min(ATTEMPT_FLOOR);
    match give_up_at {
        Some(give_up_at) => give_up_at.saturating_duration_since(now).clamp(floor, ttl),
        None => ttl,
    }
}

fn no_answer(key: &LockKey, bound: Duration) -> LockError {
    LockError::Backend {
        backend: "client",
        retryable: true,
        message: format!(
            "acquire of {key} got no answer within {bound:?}; the backend may still have granted it"
        ),
        source: None,
    }
}

fn far_future() -> Instant {
    // About 30 years, as tokio does for "never".
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::FencingToken;

    /// Says the key is held on the first attempt, then fails (retryable).
    #[derive(Debug, Default)]
    struct HeldThenDown {
        attempts: AtomicU32,
    }

    #[async_trait]
    impl LockStore for HeldThenDown {
        fn backend_name(&self) -> &'static str {
            "test"
        }

        async fn try_acquire(&self, _: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
            if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(AcquireOutcome::Held(Holder::new(
                    "alice",
                    FencingToken::new(7),
                    Duration::from_secs(60),
                )))
            } else {
                Err(LockError::Backend {
                    backend: "test",
                    retryable: true,
                    message: "connection refused".into(),
                    source: None,
                })
            }
        }

        async fn renew(&self, _: &LockKey, _: LeaseId, _: Ttl) -> Result<RenewOutcome, LockError> {
            Ok(RenewOutcome::Lost)
        }

        async fn release(&self, _: &LockKey, _: LeaseId) -> Result<ReleaseOutcome, LockError> {
            Ok(ReleaseOutcome::NotHeld)
        }

        async fn inspect(&self, _: &LockKey) -> Result<Option<Holder>, LockError> {
            Ok(None)
        }
    }

    /// M3: giving up after the key was seen held and then the backend
    /// failed keeps both: the holder, and the last error as the source.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn timeout_keeps_the_last_holder_and_the_last_error() {
        let client = LockClient::new(HeldThenDown::default());
        let outcome = client
            .acquire(
                "busy-then-down",
                AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(5)),
            )
            .await;
        match outcome {
            Err(LockError::Timeout {
                holder: Some(holder),
                last_error: Some(err),
                ..
            }) => {
                assert_eq!(holder.owner(), "alice");
                assert!(err.is_retryable(), "{err}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_attempt_is_bounded_by_the_wait_with_a_floor_and_by_the_ttl() {
        let now = Instant::now();
        let ttl = Ttl::new(Duration::from_secs(30)).unwrap();
        let wait = |d: u64| Some(now + Duration::from_secs(d));
        assert_eq!(attempt_bound(wait(10), now, ttl), Duration::from_secs(10));
        assert_eq!(attempt_bound(wait(0), now, ttl), ATTEMPT_FLOOR);
        assert_eq!(attempt_bound(wait(100), now, ttl), ttl.as_duration());
        assert_eq!(attempt_bound(None, now, ttl), ttl.as_duration());
        let short = Ttl::new(Duration::from_millis(300)).unwrap();
        assert_eq!(attempt_bound(wait(0), now, short), short.as_duration());
    }
}
