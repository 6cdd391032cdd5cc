//! The ledger's client layer: [`Ledger`], run guards and `run_once`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info_span, warn};

use super::record::{MAX_ATTEMPTS, MAX_RESULT_BYTES, RequestHash, RunError, RunRecord, RunStatus};
use super::store::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    RetryOutcome, RunPage, RunQuery,
};
use crate::guard::{GuardSettings, LeaseHandle, LockGuard};
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
        }
    }

    /// Give the key at most `attempts` runs before it is `ignored`
    /// (1..=1000; checked when used).
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
    /// its outcome (and run it here if that run fails and attempts are
    /// left) instead of answering [`RunOnce::Running`] at once.
    pub fn wait_for_running(mut self, timeout: Duration) -> Self {
        self.wait_for_running = Some(timeout);
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

    /// The store behind this ledger.
    pub fn store(&self) -> &Arc<L> {
        &self.store
    }

    /// Starts a run of `key` if its record allows one (see
    /// [`LedgerStore::begin`]), in one request. A started run's lease is
    /// renewed in the background by the same guard as a lock's.
    ///
    /// # Errors
    /// Input errors (key, TTL, attempt limit); [`LockError::RequestMismatch`]
    /// when the key's record was made for a different request hash;
    /// backend errors (a retryable one is retried once with the same lease
    /// id, so a lost reply never leaves an orphan run).
    pub async fn begin<K>(&self, key: K, options: &RunOptions) -> Result<Begin, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let key = key.try_into()?;
        let request = build_begin_request(key, options, self.owner.clone())?;
        let span = info_span!("lockstore.begin", backend = self.store.backend_name(), key = %request.key, fence = tracing::field::Empty, attempt = tracing::field::Empty);
        self.begin_request_sent(request, options)
            .instrument(span)
            .await
    }

    async fn begin_request_sent(
        &self,
        request: BeginRequest,
        options: &RunOptions,
    ) -> Result<Begin, LockError> {
        // The run's lease is kept by a guard: refuse what it cannot renew.
        self.guard.validate(request.ttl)?;
        let sent_at = Instant::now();
        let outcome = match self.store.begin(&request).await {
            Err(err) if err.is_retryable() => {
                // The reply may have been lost after the run started: ask
                // again with the same lease id, which finds that run.
                warn!(error = %err, "begin failed; retrying once with the same lease id");
                self.store.begin(&request).await
            }
            other => other,
        }?;
        match outcome {
            BeginOutcome::Started { fence, attempt } => {
                let span = tracing::Span::current();
                span.record("fence", fence.get());
                span.record("attempt", attempt);
                debug!("run started");
                let lease = Lease::new(
                    request.key.clone(),
                    request.lease_id,
                    fence,
                    request.ttl,
                    request.owner.clone(),
                    sent_at,
                );
                let keeper = Arc::new(RunLeaseKeeper {
                    ledger: Arc::clone(&self.store),
                    attempt,
                    finished: AtomicBool::new(false),
                });
                let guard = LockGuard::spawn(Arc::clone(&keeper), lease, self.guard);
                Ok(Begin::Started(RunGuard {
                    keeper,
                    guard: Some(guard),
                    attempt,
                }))
            }
            BeginOutcome::Existing(record) => {
                check_hash(&record, options)?;
                Ok(classify(record, options))
            }
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
    /// not serialise, or is over [`MAX_RESULT_BYTES`]
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
        let guard = loop {
            let request = build_begin_request(key.clone(), &options, self.owner.clone())?;
            let span = info_span!("lockstore.begin", backend = self.store.backend_name(), key = %request.key, fence = tracing::field::Empty, attempt = tracing::field::Empty);
            match self
                .begin_request_sent(request, &options)
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
                    let left = give_up_at.saturating_duration_since(Instant::now());
                    match self.wait_until(&key, left).await {
                        Ok(_) => continue, // ended: begin again decides what it means
                        Err(LockError::Timeout { .. }) => {
                            let record = self.store.get(&key).await?.unwrap_or(record);
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
                Ok(bytes) if bytes.len() <= MAX_RESULT_BYTES => {
                    guard.succeed(Some(bytes)).await?;
                    Ok(RunOnce::Ran {
                        value,
                        fence,
                        attempt,
                    })
                }
                Ok(bytes) => {
                    let err = result_too_large(bytes.len());
                    guard.fail(RunFailure::fatal(&err)).await?;
                    Err(err)
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

    /// Waits until `key`'s record exists and is not `running` (its run
    /// ended, or it was taken over and ended), woken by the backend's
    /// notification where it has one, else polling with backoff bounded by
    /// the running lease's time left.
    ///
    /// # Errors
    /// [`LockError::Timeout`] naming the running holder when `timeout`
    /// passes first; a bad key; backend errors.
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

    async fn wait_until(&self, key: &LockKey, timeout: Duration) -> Result<RunRecord, LockError> {
        let started = Instant::now();
        let give_up_at = started.checked_add(timeout).unwrap_or_else(far_future);
        let mut attempt = 0u32;
        loop {
            let signal = self.store.finish_signal(key);
            let record = self.store.get(key).await?;
            let holder = match &record {
                Some(record) if record.status != RunStatus::Running => {
                    return Ok(record.clone());
                }
                Some(record) => record.holder(),
                None => None,
            };
            let now = Instant::now();
            if now >= give_up_at {
                return Err(LockError::Timeout {
                    key: key.clone(),
                    waited: started.elapsed(),
                    holder,
                    last_error: None,
                });
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
        self.store.enqueue(&key, request_hash).await
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
        self.store.retry(&key).await
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
    if options.max_attempts == 0 || options.max_attempts > MAX_ATTEMPTS {
        return Err(LockError::InvalidArgument {
            name: "max_attempts",
            reason: format!("{} is outside 1..=1000", options.max_attempts),
        });
    }
    Ok(BeginRequest {
        key,
        lease_id: LeaseId::random(),
        ttl,
        owner: owner.unwrap_or_else(OwnerLabel::for_this_task),
        max_attempts: options.max_attempts,
        request_hash: options.request_hash.clone(),
    })
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

fn result_too_large(size: usize) -> LockError {
    LockError::ResultTooLarge {
        size,
        limit: MAX_RESULT_BYTES,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// What a [`RunGuard`] needs of its keeper, without naming the store type.
#[async_trait]
trait RunFinisher: Send + Sync + fmt::Debug {
    async fn finish_run(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError>;
    /// From now on the guard's release sends nothing.
    fn mark_finished(&self);
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
    /// [`MAX_RESULT_BYTES`]) in one request conditioned on the run's lease.
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`] (the result is not sent, and the
    /// consumed guard records the attempt as abandoned: check the size
    /// first, as [`Ledger::run_once`] does, to fail it your own way);
    /// [`LockError::LeaseLost`] when another run took the key over (nothing
    /// was changed); backend errors (the run then ends by its lease).
    pub async fn succeed(mut self, result: Option<Vec<u8>>) -> Result<(), LockError> {
        if let Some(size) = result
            .as_ref()
            .map(Vec::len)
            .filter(|&n| n > MAX_RESULT_BYTES)
        {
            return Err(result_too_large(size));
        }
        self.finish(Finish::Succeeded { result }).await.map(|_| ())
    }

    /// Records success with `result` serialised as JSON (see
    /// [`RunGuard::succeed`]).
    ///
    /// # Errors
    /// As [`RunGuard::succeed`], and [`LockError::InvalidArgument`] when
    /// `result` does not serialise.
    pub async fn succeed_json<T: Serialize>(self, result: &T) -> Result<(), LockError> {
        let bytes = serde_json::to_vec(result).map_err(|err| LockError::InvalidArgument {
            name: "result",
            reason: format!("the result does not serialise as JSON: {err}"),
        })?;
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
        let outcome = match self.keeper.finish_run(&request).await {
            Err(err) if err.is_retryable() => {
                // Finishing is conditioned on the lease id, so a repeat after
                // a lost reply is harmless: it answers NotHeld if the first
                // one landed, which we then cannot tell from a takeover.
                warn!(key = %request.key, error = %err, "finish failed; retrying once");
                self.keeper.finish_run(&request).await
            }
            other => other,
        };
        // Whatever the answer, the guard must not fail the run on release:
        // either it is finished, or its lease decides.
        self.keeper.mark_finished();
        let fence = guard.fence();
        drop(guard);
        match outcome? {
            FinishOutcome::Finished(status) => Ok(status),
            FinishOutcome::NotHeld => Err(LockError::LeaseLost {
                key: request.key,
                fence,
            }),
        }
    }

    /// After a lost lease the record is either someone else's or expired:
    /// nothing to fail, and nothing to send.
    async fn abandon_after_loss(mut self) {
        self.keeper.mark_finished();
        self.guard.take();
    }
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
        Ok(match self.ledger.finish(&request).await? {
            FinishOutcome::Finished(_) => ReleaseOutcome::Released,
            FinishOutcome::NotHeld => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        Ok(self.ledger.get(key).await?.and_then(|r| r.holder()))
    }
}
