//! The ledger's client layer: [`Ledger`], run guards and `run_once`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug, info_span, warn};

use super::record::{MAX_ATTEMPTS, RequestHash, RunError, RunRecord, RunStatus};
use super::store::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RetryOutcome, RunPage, RunQuery,
};
use crate::client::{ATTEMPT_FLOOR, attempt_bound};
use crate::guard::{GuardSettings, LeaseHandle, LockGuard};
use crate::telemetry::{self, Labels};
use crate::{
    AcquireOutcome, AcquireRequest, Backoff, FencingToken, Holder, Lease, LeaseId, LockError,
    LockKey, LockStore, OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl,
};

/// How a run is started: its lease TTL, the attempt limit, the request hash,
/// and what to do when another instance is running the key.
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::ledger::RunOptions;
///
/// let options = RunOptions::new(Duration::from_secs(60))
///     .max_attempts(5)
///     .wait_for_running(Duration::from_secs(300));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    ttl: Duration,
    max_attempts: u32,
    request_hash: Option<RequestHash>,
    wait_for_running: Option<Duration>,
    renew_until: Option<Instant>,
}

impl RunOptions {
    /// Runs leased for `ttl` (renewed in the background), 3 attempts, no
    /// request hash, no waiting for a run elsewhere.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            max_attempts: 3,
            request_hash: None,
            wait_for_running: None,
            renew_until: None,
        }
    }

    /// Give the key at most `attempts` runs before it is `ignored`
    /// (1..=1000; checked when used, or up front by
    /// [`Ledger::check_options`]).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Refuse to replay a key that was run for a different request.
    pub fn request_hash(mut self, hash: RequestHash) -> Self {
        self.request_hash = Some(hash);
        self
    }

    /// When another instance is running the key, wait up to `timeout` for
    /// its outcome (and run it here if that run fails, or crashes and its
    /// lease expires, and attempts are left) instead of answering
    /// [`RunOnce::Running`] at once. Every request `run_once` sends before
    /// the work starts is bounded by this timeout too.
    pub fn wait_for_running(mut self, timeout: Duration) -> Self {
        self.wait_for_running = Some(timeout);
        self
    }

    /// Never renew the run's lease past `deadline`, as
    /// [`AcquireOptions::renew_until`](crate::AcquireOptions::renew_until):
    /// the run is lost (and its work stopped) when the last renewal runs
    /// out, and the next `begin` can take it over from `deadline` on — or
    /// one TTL after this run began, if that was less than a TTL before.
    /// For a Lambda invocation, pass its deadline: a run killed by the
    /// timeout is not held for long after it.
    pub fn renew_until(mut self, deadline: impl Into<Instant>) -> Self {
        self.renew_until = Some(deadline.into());
        self
    }

    /// The lease TTL of a run.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Why a run's work failed, and whether another attempt may succeed.
///
/// Any `std::error::Error` converts into a retryable failure, so `?` works
/// inside the work; say [`RunFailure::fatal`] for errors that will never go
/// away (bad input), which makes the key `ignored` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    message: String,
    retryable: bool,
}

impl RunFailure {
    /// A failure a later attempt may not have.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// A failure no later attempt can fix: the key becomes `ignored`.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: false,
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl<E: std::error::Error> From<E> for RunFailure {
    fn from(err: E) -> Self {
        Self::retryable(err)
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What [`Ledger::run_once`] did.
#[derive(Debug)]
pub enum RunOnce<T> {
    /// The work ran here and succeeded; its result is stored.
    Ran {
        /// What the work returned.
        value: T,
        /// The run's fencing token.
        fence: FencingToken,
        /// Which attempt it was.
        attempt: u32,
    },
    /// The work ran here and failed. The record is `failed` (another
    /// attempt will run) or `ignored` (no attempts left, or fatal).
    Failed {
        /// The work's failure.
        failure: RunFailure,
        /// The record's status after the failure.
        status: RunStatus,
        /// Which attempt it was.
        attempt: u32,
    },
    /// An earlier run succeeded; this is its stored result.
    AlreadySucceeded {
        /// The stored result, decoded.
        value: T,
        /// The record.
        record: RunRecord,
    },
    /// Another instance is running the key (and waiting, if asked, did not
    /// see it end in time).
    Running {
        /// The record, with the holder's owner, fence and time left.
        record: RunRecord,
    },
    /// The key is not run again: it is `ignored`, or out of attempts.
    Ignored {
        /// The record, with the error history.
        record: RunRecord,
    },
}

/// What [`Ledger::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// A run started here: do the work, then finish it on the guard.
    Started(RunGuard),
    /// An earlier run succeeded.
    AlreadySucceeded(RunRecord),
    /// Another instance's run holds a live lease.
    Running(RunRecord),
    /// The key is `ignored`, or failed or stuck with no attempts left.
    Ignored(RunRecord),
}

/// The execution ledger for applications: run work for a key at most once
/// successfully, across processes and machines.
///
/// Built once over any [`LedgerStore`], like [`LockClient`](crate::LockClient)
/// over a [`LockStore`]. Cloning is cheap.
///
/// ```
/// use std::time::Duration;
/// use lockstore_api::ledger::{Ledger, RunOnce, RunOptions, RunFailure};
/// # use lockstore_api::LockError;
///
/// # async fn demo(ledger: Ledger) -> Result<(), LockError> {
/// let options = RunOptions::new(Duration::from_secs(60)).max_attempts(3);
/// let outcome = ledger
///     .run_once("etl/2026-11-23", options, |run| async move {
///         // Pass run.fence() to the warehouse so a stale run's writes are refused.
///         let rows: u64 = load("2026-11-23", run.fence().get()).await?;
///         Ok::<_, RunFailure>(rows)
///     })
///     .await?;
/// match outcome {
///     RunOnce::Ran { value, .. } => println!("loaded {value} rows"),
///     RunOnce::AlreadySucceeded { value, .. } => println!("already loaded {value} rows"),
///     RunOnce::Running { record } => println!("running elsewhere: {:?}", record.holder()),
///     RunOnce::Failed { failure, status, .. } => println!("failed ({status}): {failure}"),
///     RunOnce::Ignored { record } => println!("given up: {:?}", record.last_error()),
/// }
/// # Ok(()) }
/// # async fn load(_: &str, _: u64) -> Result<u64, std::io::Error> { Ok(1) }
/// ```
#[derive(Debug)]
pub struct Ledger<L: ?Sized + LedgerStore = dyn LedgerStore> {
    store: Arc<L>,
    owner: Option<OwnerLabel>,
    backoff: Backoff,
    guard: GuardSettings,
}

impl<L: ?Sized + LedgerStore> Clone for Ledger<L> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            owner: self.owner.clone(),
            backoff: self.backoff,
            guard: self.guard,
        }
    }
}

impl<L: LedgerStore> Ledger<L> {
    /// A ledger over `store`.
    pub fn new(store: L) -> Self {
        Self::from_arc(Arc::new(store))
    }
}

impl<L: ?Sized + LedgerStore> Ledger<L> {
    /// A ledger over a shared store, such as an `Arc<dyn LedgerStore>`.
    pub fn from_arc(store: Arc<L>) -> Self {
        Self {
            store,
            owner: None,
            backoff: Backoff::default(),
            guard: GuardSettings::default(),
        }
    }

    /// Stores `owner` with every run instead of `host/pid-N/task-M`.
    pub fn with_owner(mut self, owner: OwnerLabel) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Uses `backoff` between polls while waiting.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Labels this ledger's metrics (and its consumers') with `namespace`
    /// instead of `default`; see
    /// [`LockClient::with_metrics_namespace`](crate::LockClient::with_metrics_namespace).
    pub fn with_metrics_namespace(mut self, namespace: &'static str) -> Self {
        self.guard.namespace = namespace;
        self
    }

    /// The labels of this ledger's metrics.
    pub(crate) fn labels(&self) -> Labels {
        self.guard.labels(self.store.backend_name())
    }

    /// The store behind this ledger.
    pub fn store(&self) -> &Arc<L> {
        &self.store
    }

    /// Checks `options` as [`Ledger::begin`] would, without a request: the
    /// TTL (and that this ledger's guard can renew a lease of it) and the
    /// attempt limit. For callers that take options once and use them for
    /// many keys, so a bad setting fails at start-up rather than per key.
    ///
    /// # Errors
    /// [`LockError::InvalidTtl`] or [`LockError::InvalidArgument`] saying
    /// what to change.
    pub fn check_options(&self, options: &RunOptions) -> Result<(), LockError> {
        let ttl = Ttl::new(options.ttl)?;
        self.guard.validate(ttl)?;
        check_attempts(options.max_attempts)
    }

    /// Starts a run of `key` if its record allows one (see
    /// [`LedgerStore::begin`]), in one request. A started run's lease is
    /// renewed in the background by the same guard as a lock's.
    ///
    /// A retryable failure (a lost or late reply: one request is given at
    /// most the TTL) is retried with the same lease id, with backoff, for up
    /// to one TTL (in `run_once`, also no longer than its wait for a run
    /// elsewhere, but at least two seconds or the TTL): a request that was applied although its reply was lost
    /// is found again by its lease id (the store answers `Started` with the
    /// same fence and attempt), so a lost reply neither costs an attempt nor
    /// leaves a run nobody holds.
    ///
    /// # Errors
    /// Input errors (key, TTL, attempt limit); [`LockError::RequestMismatch`]
    /// when the key's record was made for a different request hash;
    /// backend errors: a permanent one at once, the last retryable one when
    /// the retries ran out (the run may then have been started by a request
    /// whose reply never came: it ends when its lease expires, and counts as
    /// an attempt).
    pub async fn begin<K>(&self, key: K, options: &RunOptions) -> Result<Begin, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let request = build_begin_request(key, options, self.owner.clone())?;
        let span = info_span!("lockstore.begin", backend = self.store.backend_name(), namespace = self.guard.namespace, key = %request.key, fence = tracing::field::Empty, attempt = tracing::field::Empty, took_over = tracing::field::Empty);
        self.begin_request_sent(request, options, None)
            .instrument(span)
            .await
    }

    /// Begins `request`; `deadline` is the caller's, if it has one.
    async fn begin_request_sent(
        &self,
        request: BeginRequest,
        options: &RunOptions,
        deadline: Option<Instant>,
    ) -> Result<Begin, LockError> {
        // The run's lease is kept by a guard: refuse what it cannot renew.
        self.guard.validate(request.ttl)?;
        let (outcome, sent_at) = self.send_begin(&request, deadline).await?;
        match outcome {
            BeginOutcome::Started {
                fence,
                attempt,
                took_over,
            } => {
                let span = tracing::Span::current();
                span.record("fence", fence.get());
                span.record("attempt", attempt);
                span.record("took_over", took_over);
                debug!(took_over, "run started");
                telemetry::transition(self.labels(), RunStatus::Running);
                // The store says so in its begin reply, whoever called: a
                // plain begin, run_once, the consumer. Counted here only,
                // once per begin that started a run.
                if took_over {
                    telemetry::takeover(self.labels());
                }
                let lease = Lease::new(
                    request.key.clone(),
                    request.lease_id,
                    fence,
                    request.ttl,
                    request.owner.clone(),
                    sent_at,
                );
                let keeper = Arc::new(RunLeaseKeeper {
                    labels: self.labels(),
                    ledger: Arc::clone(&self.store),
                    attempt,
                    finished: AtomicBool::new(false),
                });
                let guard =
                    LockGuard::spawn(Arc::clone(&keeper), lease, self.guard, options.renew_until);
                Ok(Begin::Started(RunGuard {
                    keeper,
                    guard: Some(guard),
                    attempt,
                    ttl: request.ttl,
                }))
            }
            BeginOutcome::Existing(record) => {
                check_hash(&record, options)?;
                Ok(classify(record, options))
            }
        }
    }

    /// Sends `request` until the store answers. One request gets at most
    /// what is left of the caller's deadline (at least a short floor), never
    /// more than the TTL; a retryable failure is retried with the same lease
    /// id, with backoff, until one TTL after the first request or the
    /// caller's deadline, whichever is first — but for at least the same
    /// short floor, so that a caller who waits for nothing still has a lost
    /// reply retried rather than an attempt spent. Returns the answer and
    /// when the request that got it was sent (where the lease's time starts:
    /// a repeated begin refreshes the lease).
    async fn send_begin(
        &self,
        request: &BeginRequest,
        deadline: Option<Instant>,
    ) -> Result<(BeginOutcome, Instant), LockError> {
        let first = Instant::now();
        let ttl_later = first
            .checked_add(request.ttl.as_duration())
            .unwrap_or_else(far_future);
        let floor = first + ATTEMPT_FLOOR.min(request.ttl.as_duration());
        let retry_until = deadline.map_or(ttl_later, |deadline| deadline.max(floor).min(ttl_later));
        let mut retries = 0u32;
        loop {
            let sent_at = Instant::now();
            let bound = attempt_bound(Some(retry_until), sent_at, request.ttl);
            let result = timeout(bound, self.store.begin(request))
                .await
                .unwrap_or_else(|_| Err(no_answer("begin", &request.key, bound)));
            let err = match result {
                Ok(outcome) => return Ok((outcome, sent_at)),
                Err(err) if err.is_retryable() => err,
                Err(err) => return Err(err),
            };
            let now = Instant::now();
            if now >= retry_until {
                warn!(error = %err, retries, "begin failed; giving up");
                return Err(err);
            }
            // The reply may have been lost after the run started: the same
            // lease id finds that run instead of starting another attempt.
            warn!(error = %err, retries, "begin failed; retrying with the same lease id");
            sleep(self.backoff.delay(retries).min(retry_until - now)).await;
            retries = retries.saturating_add(1);
        }
    }

    /// Runs `work` for `key` unless it already succeeded, is running
    /// elsewhere, or is ignored; stores its result (JSON) or its error.
    ///
    /// `work` gets a [`LeaseHandle`] with the run's fencing token; if the
    /// run's lease is lost before `work` finishes, `work` is dropped at its
    /// next await point and the call fails with [`LockError::LeaseLost`]
    /// (the record then stays `running` until its lease expires, and the
    /// next `begin` takes it over). A `work` future dropped by the caller
    /// marks the attempt failed (retryable), best effort.
    ///
    /// # Errors
    /// As [`Ledger::begin`]; [`LockError::LeaseLost`]; a result that does
    /// not serialise, or is over [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES)
    /// ([`LockError::ResultTooLarge`]: the attempt is then recorded as a
    /// fatal failure); a stored result that does not decode as `T`.
    pub async fn run_once<K, T, F, Fut>(
        &self,
        key: K,
        options: RunOptions,
        work: F,
    ) -> Result<RunOnce<T>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
        T: Serialize + DeserializeOwned,
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, RunFailure>>,
    {
        let key: LockKey = key.try_into()?;
        let give_up_at = options.wait_for_running.map(|timeout| {
            Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future)
        });
        let mut waited = false;
        let guard = loop {
            let request = build_begin_request(key.clone(), &options, self.owner.clone())?;
            let span = info_span!("lockstore.begin", backend = self.store.backend_name(), namespace = self.guard.namespace, key = %request.key, fence = tracing::field::Empty, attempt = tracing::field::Empty, took_over = tracing::field::Empty);
            match self
                .begin_request_sent(request, &options, give_up_at)
                .instrument(span)
                .await?
            {
                Begin::Started(guard) => break guard,
                Begin::AlreadySucceeded(record) => {
                    let value = record.result_json()?;
                    return Ok(RunOnce::AlreadySucceeded { value, record });
                }
                Begin::Ignored(record) => return Ok(RunOnce::Ignored { record }),
                Begin::Running(record) => {
                    let Some(give_up_at) = give_up_at else {
                        return Ok(RunOnce::Running { record });
                    };
                    let now = Instant::now();
                    if waited && now >= give_up_at {
                        // The wait saw the run end, yet a begin at the
                        // deadline finds one live again: it is over.
                        return Ok(RunOnce::Running { record });
                    }
                    waited = true;
                    match self
                        .wait_until(&key, give_up_at - now.min(give_up_at))
                        .await
                    {
                        // The run ended, or it is stuck (its worker is gone):
                        // begin again decides — take it over, replay its
                        // result, or give up when no attempts are left.
                        Ok(_) => continue,
                        Err(LockError::Timeout { .. }) => {
                            let latest = timeout(ATTEMPT_FLOOR, self.store.get(&key)).await;
                            let record = match latest {
                                Ok(Ok(Some(latest))) => latest,
                                _ => record,
                            };
                            return Ok(RunOnce::Running { record });
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        };
        let (fence, attempt) = (guard.fence(), guard.attempt());
        let handle = guard.handle();
        let output = {
            let lost = guard.lost_future();
            tokio::select! {
                biased;
                () = lost => None,
                output = work(handle) => Some(output),
            }
        };
        match output {
            None => {
                let key = guard.key().clone();
                guard.abandon_after_loss().await;
                Err(LockError::LeaseLost { key, fence })
            }
            Some(Ok(value)) => match serde_json::to_vec(&value) {
                Ok(bytes) => {
                    let succeeded = Finish::Succeeded {
                        result: Some(bytes),
                    };
                    if let Err(err) = succeeded.validate() {
                        guard.fail(RunFailure::fatal(&err)).await?;
                        return Err(err);
                    }
                    let mut guard = guard;
                    guard.finish(succeeded).await?;
                    Ok(RunOnce::Ran {
                        value,
                        fence,
                        attempt,
                    })
                }
                Err(err) => {
                    let message = format!("the result does not serialise as JSON: {err}");
                    guard.fail(RunFailure::fatal(&message)).await?;
                    Err(LockError::InvalidArgument {
                        name: "result",
                        reason: message,
                    })
                }
            },
            Some(Err(failure)) => {
                let status = guard.fail(failure.clone()).await?;
                Ok(RunOnce::Failed {
                    failure,
                    status,
                    attempt,
                })
            }
        }
    }

    /// Waits until `key`'s record exists and its run has ended: it is not
    /// `running`, or it is stuck (running with an expired lease: its worker
    /// crashed or hung, and the next [`Ledger::begin`] takes it over, or
    /// answers [`Begin::Ignored`] when no attempts are left). Woken by the
    /// backend's notification where it has one, else polling with backoff
    /// bounded by the running lease's time left.
    ///
    /// Every read is bounded by what is left of `timeout` (at least a short
    /// floor, so a read can reach a slow backend at all), and a read that
    /// fails retryably is tried again within it.
    ///
    /// # Errors
    /// [`LockError::Timeout`] naming the running holder when `timeout`
    /// passes first (with the last read's error, if it failed); a bad key;
    /// a permanent backend error; when no read ever saw the record running
    /// and the last one failed or got no answer, that retryable error.
    pub async fn wait<K>(&self, key: K, timeout: Duration) -> Result<RunRecord, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        self.wait_until(&key, timeout).await
    }

    /// Waits for every key of `keys` as [`Ledger::wait`] does, with one
    /// deadline for all; returns their records in the order given.
    ///
    /// # Errors
    /// As [`Ledger::wait`], for the first key still running at the deadline.
    pub async fn wait_all<I, K>(
        &self,
        keys: I,
        timeout: Duration,
    ) -> Result<Vec<RunRecord>, LockError>
    where
        I: IntoIterator<Item = K>,
        K: TryInto<LockKey, Error = LockError>,
    {
        let keys = keys
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<Vec<LockKey>, _>>()?;
        let give_up_at = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        let mut records = Vec::with_capacity(keys.len());
        for key in &keys {
            let left = give_up_at.saturating_duration_since(Instant::now());
            records.push(self.wait_until(key, left).await?);
        }
        Ok(records)
    }

    async fn wait_until(&self, key: &LockKey, wait: Duration) -> Result<RunRecord, LockError> {
        let started = Instant::now();
        let give_up_at = started.checked_add(wait).unwrap_or_else(far_future);
        let mut attempt = 0u32;
        let mut last_holder = None;
        loop {
            let signal = self.store.finish_signal(key);
            let bound = give_up_at
                .saturating_duration_since(Instant::now())
                .max(ATTEMPT_FLOOR);
            let read = timeout(bound, self.store.get(key))
                .await
                .unwrap_or_else(|_| Err(no_answer("read of the record", key, bound)));
            let (holder, failure) = match read {
                // A stuck run has ended too, by expiry: nobody announces it,
                // and waiting on would outlast the takeover it allows.
                Ok(Some(record)) if record.status != RunStatus::Running || record.is_stuck() => {
                    return Ok(record);
                }
                Ok(Some(record)) => (record.holder(), None),
                Ok(None) => (None, None),
                Err(err) if err.is_retryable() => (None, Some(err)),
                Err(err) => return Err(err),
            };
            if holder.is_some() {
                last_holder.clone_from(&holder);
            }
            let now = Instant::now();
            if now >= give_up_at {
                return Err(match (failure, last_holder) {
                    (Some(err), None) => err,
                    (failure, holder) => LockError::Timeout {
                        key: key.clone(),
                        waited: started.elapsed(),
                        holder,
                        last_error: failure.map(Box::new),
                    },
                });
            }
            if let Some(err) = &failure {
                warn!(%key, error = %err, "reading a run record failed; trying again");
            }
            let mut delay = self.backoff.delay(attempt).min(give_up_at - now);
            if let Some(holder) = &holder {
                // A crashed run ends by expiry, which nobody announces.
                delay = delay.min(holder.expires_in() + Duration::from_millis(1));
            }
            attempt = attempt.saturating_add(1);
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

    /// The record of `key`, if any.
    ///
    /// # Errors
    /// A bad key; backend errors.
    pub async fn get<K>(&self, key: K) -> Result<Option<RunRecord>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        self.store.get(&key).await
    }

    /// Queues `key` as `pending` unless it has a record; never resets one.
    ///
    /// # Errors
    /// A bad key; backend errors.
    pub async fn enqueue<K>(
        &self,
        key: K,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let outcome = self.store.enqueue(&key, request_hash).await?;
        if outcome == EnqueueOutcome::Created {
            telemetry::transition(self.labels(), RunStatus::Pending);
        }
        Ok(outcome)
    }

    /// Puts a failed, ignored or stuck key back to `pending` (an operator's
    /// action; see [`LedgerStore::retry`]).
    ///
    /// # Errors
    /// A bad key; backend errors.
    pub async fn retry<K>(&self, key: K) -> Result<RetryOutcome, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let outcome = self.store.retry(&key).await?;
        if outcome == RetryOutcome::Requeued {
            telemetry::transition(self.labels(), RunStatus::Pending);
        }
        Ok(outcome)
    }

    /// One page of records by status.
    ///
    /// # Errors
    /// A limit outside 1..=1000; backend errors.
    pub async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        query.validate()?;
        self.store.query(query).await
    }

    /// Deletes finished records older than `older_than` (see
    /// [`LedgerStore::purge`]).
    ///
    /// # Errors
    /// A retention over 100 years; backend errors.
    pub async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        if older_than > MAX_RETENTION {
            return Err(LockError::InvalidArgument {
                name: "retention",
                reason: format!("{older_than:?} is over 100 years"),
            });
        }
        self.store.purge(older_than).await
    }
}

/// The longest retention `purge` accepts.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn build_begin_request(
    key: LockKey,
    options: &RunOptions,
    owner: Option<OwnerLabel>,
) -> Result<BeginRequest, LockError> {
    let ttl = Ttl::new(options.ttl)?;
    check_attempts(options.max_attempts)?;
    Ok(BeginRequest {
        key,
        lease_id: LeaseId::random(),
        ttl,
        owner: owner.unwrap_or_else(OwnerLabel::for_this_task),
        max_attempts: options.max_attempts,
        request_hash: options.request_hash.clone(),
    })
}

fn check_attempts(max_attempts: u32) -> Result<(), LockError> {
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS {
        return Err(LockError::InvalidArgument {
            name: "max_attempts",
            reason: format!("{max_attempts} is outside 1..=1000"),
        });
    }
    Ok(())
}

fn check_hash(record: &RunRecord, options: &RunOptions) -> Result<(), LockError> {
    match (&record.request_hash, &options.request_hash) {
        (Some(stored), Some(given)) if stored != given => Err(LockError::RequestMismatch {
            key: record.key.clone(),
            stored: stored.to_string(),
            given: given.to_string(),
        }),
        _ => Ok(()),
    }
}

fn classify(record: RunRecord, _options: &RunOptions) -> Begin {
    match record.status {
        RunStatus::Succeeded => Begin::AlreadySucceeded(record),
        RunStatus::Running if record.lease_expires_in.is_some() => Begin::Running(record),
        // Ignored; failed or stuck without attempts left; a pending record
        // refused only through a backend bug, reported rather than hidden.
        _ => Begin::Ignored(record),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// A request that got no answer in time: retryable, since it may yet have
/// been applied (and a repeat finds out).
fn no_answer(what: &str, key: &LockKey, bound: Duration) -> LockError {
    LockError::Backend {
        backend: "client",
        retryable: true,
        message: format!(
            "{what} of run {key} got no answer within {bound:?}; the backend may still have applied it"
        ),
        source: None,
    }
}

/// What a [`RunGuard`] needs of its keeper, without naming the store type.
#[async_trait]
trait RunFinisher: Send + Sync + fmt::Debug {
    async fn finish_run(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError>;
    /// From now on the guard's release sends nothing.
    fn mark_finished(&self);
    /// The labels of the run's metrics.
    fn labels(&self) -> Labels;
}

/// A started run: its lease renewed in the background, finished with
/// [`RunGuard::succeed`] or [`RunGuard::fail`].
///
/// Dropped without finishing (the work panicked or was cancelled), it marks
/// the attempt failed (retryable) in the background, best effort, so the
/// next `begin` need not wait for the lease to expire.
#[derive(Debug)]
#[must_use = "dropping a run guard records the attempt as failed"]
pub struct RunGuard {
    keeper: Arc<dyn RunFinisher>,
    guard: Option<LockGuard>,
    attempt: u32,
    /// Bounds each finish request: a finish later than that finds the run's
    /// lease expired anyway.
    ttl: Ttl,
}

impl RunGuard {
    fn lock_guard(&self) -> &LockGuard {
        self.guard
            .as_ref()
            .expect("the guard is only taken when the run guard is consumed")
    }

    /// The run's key.
    pub fn key(&self) -> &LockKey {
        self.lock_guard().key()
    }

    /// The run's fencing token: pass it to whatever the work writes to.
    pub fn fence(&self) -> FencingToken {
        self.lock_guard().fence()
    }

    /// Which attempt this run is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The run's secret lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.lock_guard().lease_id()
    }

    /// Whether the run's lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lock_guard().is_lost()
    }

    /// Resolves when the run's lease is lost.
    pub async fn lost(&self) {
        self.lock_guard().lost().await;
    }

    fn lost_future(&self) -> impl Future<Output = ()> + use<> {
        self.lock_guard().lost()
    }

    /// A handle with the key, fence and loss signal, for the work.
    pub fn handle(&self) -> LeaseHandle {
        self.lock_guard().handle()
    }

    /// Records success with `result` (raw bytes, at most
    /// [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES)) in one request conditioned on the run's lease.
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`] (the result is not sent, and the
    /// consumed guard records the attempt as abandoned: check the size
    /// first, as [`Ledger::run_once`] does, to fail it your own way);
    /// [`LockError::LeaseLost`] when another run took the key over (nothing
    /// was changed); backend errors (the run then ends by its lease).
    pub async fn succeed(mut self, result: Option<Vec<u8>>) -> Result<(), LockError> {
        let finish = Finish::Succeeded { result };
        finish.validate()?;
        self.finish(finish).await.map(|_| ())
    }

    /// Records success with `result` serialised as JSON (see
    /// [`RunGuard::succeed`]).
    ///
    /// # Errors
    /// As [`RunGuard::succeed`], and [`LockError::InvalidArgument`] when
    /// `result` does not serialise.
    pub async fn succeed_json<T: Serialize>(self, result: &T) -> Result<(), LockError> {
        let bytes = result_json(result)?;
        self.succeed(Some(bytes)).await
    }

    /// Records this attempt's failure; returns the record's new status
    /// (`failed`: another attempt will run; `ignored`: no more).
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when another run took the key over; backend
    /// errors.
    pub async fn fail(mut self, failure: RunFailure) -> Result<RunStatus, LockError> {
        let error = RunError::new(self.attempt, failure.message, failure.retryable);
        self.finish(Finish::Failed { error }).await
    }

    async fn finish(&mut self, finish: Finish) -> Result<RunStatus, LockError> {
        let guard = self
            .guard
            .take()
            .expect("the guard is only taken when the run guard is consumed");
        let request = FinishRequest {
            key: guard.key().clone(),
            lease_id: guard.lease_id(),
            finish,
        };
        let bound = self.ttl.as_duration();
        let send = || async {
            timeout(bound, self.keeper.finish_run(&request))
                .await
                .unwrap_or_else(|_| Err(no_answer("finish", &request.key, bound)))
        };
        let outcome = match send().await {
            Err(err) if err.is_retryable() => {
                // Finishing is conditioned on the lease id, so a repeat after
                // a lost reply is harmless: it answers NotHeld if the first
                // one landed, which we then cannot tell from a takeover.
                warn!(key = %request.key, error = %err, "finish failed; retrying once");
                send().await
            }
            other => other,
        };
        // Whatever the answer, the guard must not fail the run on release:
        // either it is finished, or its lease decides.
        self.keeper.mark_finished();
        let fence = guard.fence();
        drop(guard);
        telemetry::finished(self.keeper.labels(), &outcome);
        match outcome? {
            FinishOutcome::Finished(status) => Ok(status),
            FinishOutcome::NotHeld => Err(LockError::LeaseLost {
                key: request.key,
                fence,
            }),
        }
    }

    /// Takes the run out of its guard, to be finished by a write of the
    /// caller's own transaction (a backend's `succeed_in`, or a DynamoDB
    /// `TransactWriteItems` item) instead of a request of its own.
    ///
    /// From here on the run's lease is **no longer renewed**, and nothing is
    /// sent when the [`DetachedRun`] is dropped: the run ends by the
    /// transaction's finish if it commits, or else by its lease running out
    /// (the next `begin` then takes it over, as after a crash). The finish
    /// is conditioned on the run's lease id exactly as [`RunGuard::succeed`]
    /// is, so a run taken over in the meantime is refused, never recorded.
    pub fn detach(mut self) -> DetachedRun {
        let guard = self
            .guard
            .take()
            .expect("the guard is only taken when the run guard is consumed");
        // Before the guard goes: its release must not fail the run.
        self.keeper.mark_finished();
        DetachedRun {
            key: guard.key().clone(),
            lease_id: guard.lease_id(),
            fence: guard.fence(),
            attempt: self.attempt,
        }
    }

    /// After a lost lease the record is either someone else's or expired:
    /// nothing to fail, and nothing to send.
    async fn abandon_after_loss(mut self) {
        self.keeper.mark_finished();
        self.guard.take();
    }
}

/// A run taken out of its [`RunGuard`] by [`RunGuard::detach`], to be
/// finished inside the caller's own transaction: the business write and the
/// run's success commit together, or neither does.
///
/// It holds what the finish is conditioned on (the key and the run's lease
/// id) and the run's fence. Its lease is not renewed; dropping it sends
/// nothing (an uncommitted finish leaves the run to its lease, and the next
/// `begin` takes it over once the lease has expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedRun {
    key: LockKey,
    lease_id: LeaseId,
    fence: FencingToken,
    attempt: u32,
}

impl DetachedRun {
    /// The run's key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The run's secret lease id: the finish is conditioned on it.
    pub fn lease_id(&self) -> LeaseId {
        self.lease_id
    }

    /// The run's fencing token.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// Which attempt the run is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The request that records the run's success with `result`, for a
    /// backend to write inside the caller's transaction.
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`] (nothing is written).
    pub fn succeeded(&self, result: Option<Vec<u8>>) -> Result<FinishRequest, LockError> {
        let finish = Finish::Succeeded { result };
        finish.validate()?;
        Ok(FinishRequest {
            key: self.key.clone(),
            lease_id: self.lease_id,
            finish,
        })
    }

    /// The error a refused finish means: another run took the key over (or
    /// an operator changed its record), and the caller must roll back.
    pub fn lease_lost(&self) -> LockError {
        LockError::LeaseLost {
            key: self.key.clone(),
            fence: self.fence,
        }
    }
}

/// A result serialised as JSON, for the transactional finishes of the
/// backends (`succeed_json_in` and the like).
///
/// # Errors
/// [`LockError::InvalidArgument`] when `result` does not serialise.
pub fn result_json<T: Serialize>(result: &T) -> Result<Vec<u8>, LockError> {
    serde_json::to_vec(result).map_err(|err| LockError::InvalidArgument {
        name: "result",
        reason: format!("the result does not serialise as JSON: {err}"),
    })
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        // The LockGuard's drop releases through the keeper, which records
        // the abandoned attempt unless the run was finished.
        self.guard.take();
    }
}

/// Lets a [`LockGuard`] keep a run's lease: renewals go to
/// [`LedgerStore::renew_run`]; the guard's release (on drop of an
/// unfinished run) records the attempt as failed.
#[derive(Debug)]
struct RunLeaseKeeper<L: ?Sized> {
    labels: Labels,
    ledger: Arc<L>,
    attempt: u32,
    finished: AtomicBool,
}

#[async_trait]
impl<L: ?Sized + LedgerStore> RunFinisher for RunLeaseKeeper<L> {
    async fn finish_run(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        self.ledger.finish(request).await
    }

    fn mark_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    fn labels(&self) -> Labels {
        self.labels
    }
}

#[async_trait]
impl<L: ?Sized + LedgerStore> LockStore for RunLeaseKeeper<L> {
    fn backend_name(&self) -> &'static str {
        self.ledger.backend_name()
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        // Never called: runs are started by `begin`, not by acquiring.
        Err(LockError::config(
            self.ledger.backend_name(),
            format!("run {} cannot be acquired as a lock", request.key),
        ))
    }

    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        self.ledger.renew_run(key, lease_id, ttl).await
    }

    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        if self.finished.load(Ordering::SeqCst) {
            return Ok(ReleaseOutcome::NotHeld);
        }
        let request = FinishRequest {
            key: key.clone(),
            lease_id,
            finish: Finish::Failed {
                error: RunError::new(
                    self.attempt,
                    "abandoned: the worker stopped before finishing the run",
                    true,
                ),
            },
        };
        let outcome = self.ledger.finish(&request).await;
        telemetry::finished(self.labels, &outcome);
        Ok(match outcome? {
            FinishOutcome::Finished(_) => ReleaseOutcome::Released,
            FinishOutcome::NotHeld => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        Ok(self.ledger.get(key).await?.and_then(|r| r.holder()))
    }
}
