//! Leader election: one leader per name at a time, with fenced terms.
//!
//! An election is a lock whose holder publishes a value. Candidates
//! [`campaign`](Election::campaign) for a name; the one that gets its lease
//! leads until it [resigns](Leadership::resign), stops renewing (its
//! process died) or loses the lease, and then the next candidate takes over.
//! Because it *is* a lease on the name, an election inherits every promise of
//! the lock contract on every backend, with nothing new for a backend to
//! implement:
//!
//! * **One leader at a time**, by the backend's clock.
//! * **Fenced terms**: a term is the lease's fencing token, strictly
//!   increasing per name across every hand-over, expiry, cleanup and
//!   restart. Hand it to what the leader writes to, and a deposed leader
//!   that still believes it leads (a paused process) is refused.
//! * **A leader that stops trusting its term by its local deadline**:
//!   [`Leadership::is_lost`] and [`Leadership::lost`] are the guard's.
//!
//! The leader's **published value** (an address, a version) and its
//! candidate label are stored as the lease's owner label,
//! `candidate` + U+001F + `value`, so [`Election::leader`] reads leader,
//! value, term and time left in one request, and [`Leadership::proclaim`]
//! changes the value in one request without giving up the term (a retried
//! acquire by the holder's own lease id, which stores the new label and
//! keeps the fence). Candidate and value together fit in
//! [`OwnerLabel::MAX_LEN`] bytes.
//!
//! # Cost and hand-over
//!
//! A waiting candidate backs off with full jitter up to a third of the
//! election's TTL ([`Election::backoff`]), and never sleeps past the moment
//! the leader's lease could expire; where the backend announces releases
//! (memory, Redis, PostgreSQL) a resignation wakes it at once. So an idle
//! candidate costs about six requests per TTL (a mean sleep of a sixth of
//! it: 64 candidates on a 15-second TTL ask about 26 times a second, the
//! leader's renewals 0.2); a resigned leader is replaced within a few round trips on
//! those backends, within one backoff step on SQLite and DynamoDB; a leader
//! whose process died is replaced within one TTL after its last renewal
//! plus one backoff step.
//!
//! ```
//! # use lockstore_api::*;
//! # async fn demo(client: LockClient) -> Result<(), LockError> {
//! use std::time::Duration;
//!
//! let election = client.election("billing-scheduler", Duration::from_secs(15))?;
//! let leadership = election.campaign("10.0.3.7:8080").await?;
//! println!("leading in term {}", leadership.term());
//! tokio::select! {
//!     () = leadership.lost() => println!("deposed: stop at once"),
//!     () = schedule_billing(leadership.term().get()) => {}
//! }
//! leadership.resign().await?;
//! # Ok(()) }
//! # async fn schedule_billing(_term: u64) {}
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::time::{sleep, timeout};
use tracing::{debug, warn};

use crate::telemetry::{self, Labels};
use crate::{
    AcquireOptions, AcquireOutcome, AcquireRequest, Backoff, CancellationToken, FencingToken,
    Holder, LeaseHandle, LockClient, LockError, LockGuard, LockKey, LockStore, OwnerLabel,
    ReleaseOutcome, Ttl,
};

/// Between the candidate and the value in the owner label: the ASCII unit
/// separator, which no candidate label may contain.
const SEPARATOR: char = '\u{1f}';

/// How often an [`Observer`] asks by default.
const DEFAULT_OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// The longest a proclamation waits for its answer.
const PROCLAIM_BOUND: Duration = Duration::from_secs(5);

/// One election name on a store; see the [module docs](self).
#[derive(Debug)]
pub struct Election<S: ?Sized + LockStore = dyn LockStore> {
    client: LockClient<S>,
    name: LockKey,
    ttl: Ttl,
    candidate: OwnerLabel,
    observe_every: Duration,
}

impl<S: ?Sized + LockStore> Clone for Election<S> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            name: self.name.clone(),
            ttl: self.ttl,
            candidate: self.candidate.clone(),
            observe_every: self.observe_every,
        }
    }
}

impl<S: ?Sized + LockStore> LockClient<S> {
    /// An election for `name`, whose leaders hold it by a lease of `ttl`
    /// renewed in the background. The candidate label is the client's owner
    /// ([`LockClient::with_owner`]), by default `host/pid-N`.
    ///
    /// A shorter TTL replaces a dead leader sooner and costs more requests
    /// (each leader renews a few times per TTL, each idle candidate asks
    /// about once per TTL).
    ///
    /// # Errors
    /// An invalid name or TTL, a safety margin of half the TTL or more, or a
    /// candidate label containing U+001F (the separator of the published
    /// value), before any request.
    pub fn election<K>(&self, name: K, ttl: Duration) -> Result<Election<S>, LockError>
    where
        K: TryInto<LockKey, Error = LockError>,
    {
        let name = name.try_into()?;
        let ttl = Ttl::new(ttl)?;
        self.guard.validate(ttl)?;
        let candidate = self
            .owner()
            .cloned()
            .unwrap_or_else(OwnerLabel::for_this_process);
        if candidate.as_str().contains(SEPARATOR) {
            return Err(LockError::InvalidOwner {
                label: candidate.as_str().escape_debug().to_string(),
                reason: "an election candidate's label cannot contain U+001F, the separator of its published value",
            });
        }
        // Waiting candidates sleep up to a third of the TTL between attempts
        // (and never past the moment the leader's lease could expire): an
        // idle candidate then costs a few requests per TTL, where the
        // lock's default backoff would ask every second.
        let client = self.clone().with_backoff(Backoff::new(
            Duration::from_millis(10).min(ttl.as_duration()),
            ttl.as_duration() / 3,
        ));
        Ok(Election {
            client,
            name,
            ttl,
            candidate,
            observe_every: DEFAULT_OBSERVE_EVERY,
        })
    }
}

impl<S: ?Sized + LockStore> Election<S> {
    /// The election's name (the key its leaders hold).
    pub fn name(&self) -> &LockKey {
        &self.name
    }

    /// This candidate's label.
    pub fn candidate(&self) -> &str {
        self.candidate.as_str()
    }

    /// How waiting candidates back off between attempts (by default from
    /// 10 ms up to a third of the TTL, with full jitter; never past the
    /// moment the leader's lease could expire).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.client = self.client.with_backoff(backoff);
        self
    }

    /// How often [`Election::observe`] asks the store when nothing wakes it
    /// sooner (default one second; at least a millisecond).
    pub fn observe_every(mut self, every: Duration) -> Self {
        self.observe_every = every.max(Duration::from_millis(1));
        self
    }

    /// Waits until this candidate leads, publishing `value`, and returns
    /// its leadership: the term's fence, a guard renewing the lease in the
    /// background, [`Leadership::proclaim`] and [`Leadership::resign`].
    ///
    /// Waits for as long as it takes; to stop campaigning, drop the future
    /// (a `select!` with a shutdown signal, or [`Election::lead`], which
    /// does that).
    ///
    /// # Errors
    /// A value that does not fit beside the candidate label (see the
    /// [module docs](self)) before any request; a backend error that is not
    /// retryable (retryable ones are retried).
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership<S>, LockError> {
        let value = value.into();
        let owner = label(&self.candidate, &value)?;
        let options = AcquireOptions::new(self.ttl.as_duration()).wait_forever();
        let guard = self
            .client
            .clone()
            .with_owner(owner)
            .acquire(&self.name, options)
            .await?;
        debug!(name = %self.name, term = guard.fence().get(), "leading");
        let labels = self.client.guard.labels(self.client.store().backend_name());
        telemetry::leadership(labels, "won");
        Ok(Leadership {
            labels,
            guard,
            store: Arc::clone(self.client.store()),
            candidate: self.candidate.clone(),
            ttl: self.ttl,
            value,
        })
    }

    /// The current leader, or `None` when nobody leads: one request.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn leader(&self) -> Result<Option<Leader>, LockError> {
        Ok(self.client.inspect(&self.name).await?.map(Leader::from))
    }

    /// Watches the leadership: the current state at once, then each change
    /// (a new term, a new value, nobody leading). See [`Observer`].
    pub fn observe(&self) -> Observer<S> {
        Observer {
            election: self.clone(),
            last: None,
            highest_term: None,
        }
    }

    /// Leads, runs `work`, and leads again after a loss, until `work`
    /// finishes or `cancel` is cancelled (client-go's `LeaderElector` with
    /// `ReleaseOnCancel`).
    ///
    /// Each term, `work` gets the term's [`LeaseHandle`] (its fence is the
    /// term). When the leadership is lost, `work` is dropped at its next
    /// await point and this candidate campaigns again; work that finishes
    /// after its term's local deadline counts as lost too (it ran partly
    /// without leading). When `work` finishes in time, the leadership is
    /// resigned and its output returned. When `cancel` is cancelled, the
    /// campaign or the work is dropped, the leadership (if any) is resigned
    /// at once, so a rolling deploy hands over in a few round trips instead
    /// of a TTL, and the call returns `None`.
    ///
    /// # Errors
    /// As [`Election::campaign`]; a failed resignation after `work`
    /// finished.
    pub async fn lead<F, Fut, T>(
        &self,
        value: impl Into<String>,
        cancel: CancellationToken,
        mut work: F,
    ) -> Result<Option<T>, LockError>
    where
        F: FnMut(LeaseHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        let value = value.into();
        loop {
            let leadership = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(None),
                won = self.campaign(value.clone()) => won?,
            };
            let term = leadership.term();
            let ran = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    if let Err(err) = leadership.resign().await {
                        warn!(name = %self.name, error = %err, "could not resign on cancel; the term ends by its TTL");
                    }
                    return Ok(None);
                }
                () = leadership.lost() => None,
                output = work(leadership.handle()) => Some(output),
            };
            match ran {
                Some(output) if !leadership.is_lost() => {
                    leadership.resign().await?;
                    return Ok(Some(output));
                }
                _ => {
                    warn!(name = %self.name, term = term.get(), "leadership lost; campaigning again")
                }
            }
        }
    }
}

/// The owner label that publishes `value` for `candidate`.
fn label(candidate: &OwnerLabel, value: &str) -> Result<OwnerLabel, LockError> {
    OwnerLabel::new(format!("{candidate}{SEPARATOR}{value}")).map_err(|err| match err {
        LockError::InvalidOwner { reason, .. } => LockError::InvalidArgument {
            name: "value",
            reason: format!(
                "an election's published value must fit beside the candidate label in {} bytes \
                 ({} + {} given) and hold no NUL: {reason}",
                OwnerLabel::MAX_LEN,
                candidate.as_str().len() + SEPARATOR.len_utf8(),
                value.len(),
            ),
        },
        other => other,
    })
}

/// Leading an election: the term's guard. Dropping it resigns (the lease is
/// released in the background), as dropping a [`LockGuard`] releases.
#[derive(Debug)]
#[must_use = "dropping a leadership resigns it"]
pub struct Leadership<S: ?Sized + LockStore = dyn LockStore> {
    labels: Labels,
    guard: LockGuard,
    store: Arc<S>,
    candidate: OwnerLabel,
    ttl: Ttl,
    value: String,
}

impl<S: ?Sized + LockStore> Leadership<S> {
    /// The term: the lease's fencing token, strictly increasing per
    /// election. Pass it to whatever the leader writes to.
    pub fn term(&self) -> FencingToken {
        self.guard.fence()
    }

    /// The value this leader publishes.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// This leader's candidate label.
    pub fn candidate(&self) -> &str {
        self.candidate.as_str()
    }

    /// Whether the leadership is lost, judged on the local deadline as
    /// [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// The term if it is still trusted, else [`LockError::LeaseLost`]:
    /// call it just before a write, as [`LockGuard::check`].
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the leadership is lost.
    pub fn check(&self) -> Result<FencingToken, LockError> {
        self.guard.check()
    }

    /// Resolves when the leadership is lost, as [`LockGuard::lost`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<S> {
        self.guard.lost()
    }

    /// A handle with the term (as its fence) and the loss signal, for work
    /// running as leader.
    pub fn handle(&self) -> LeaseHandle {
        self.guard.handle()
    }

    /// Publishes `value` instead, keeping the term: one request.
    ///
    /// # Errors
    /// A value that does not fit (see the [module docs](self)) before any
    /// request; [`LockError::LeaseLost`] when this term is over (the
    /// leadership is then reported lost); backend errors, after which the
    /// published value may be either.
    pub async fn proclaim(&mut self, value: impl Into<String>) -> Result<(), LockError> {
        let value = value.into();
        let owner = label(&self.candidate, &value)?;
        let term = self.check()?;
        let request = AcquireRequest {
            key: self.guard.key().clone(),
            lease_id: self.guard.lease_id(),
            ttl: self.ttl,
            owner,
        };
        let bound = PROCLAIM_BOUND.min(self.ttl.as_duration());
        let outcome = timeout(bound, self.store.try_acquire(&request))
            .await
            .map_err(|_| LockError::Backend {
                backend: "client",
                retryable: true,
                message: format!(
                    "a proclamation on {} got no answer within {bound:?}; the published value may be either",
                    request.key
                ),
                source: None,
            })??;
        match outcome {
            // The same lease id: the store refreshed our own lease, with the
            // new label, and kept its fence.
            AcquireOutcome::Acquired { fence } if fence == term => {
                self.value = value;
                Ok(())
            }
            // Our lease had expired and the acquire took the free name
            // again under our id: a new term, which this guard does not
            // hold. Give it back; the old term is over.
            AcquireOutcome::Acquired { .. } => {
                let _ = self.store.release(&request.key, request.lease_id).await;
                self.guard.mark_lost();
                Err(self.lost_error())
            }
            AcquireOutcome::Held(_) => {
                self.guard.mark_lost();
                Err(self.lost_error())
            }
        }
    }

    /// Ends the term at once, so the next candidate takes over now instead
    /// of after a TTL.
    ///
    /// # Errors
    /// Backend errors (the term then ends by its TTL). A term already lost
    /// is not an error.
    pub async fn resign(self) -> Result<(), LockError> {
        let labels = self.labels;
        let released = self.guard.release().await?;
        if released == ReleaseOutcome::Released {
            telemetry::leadership(labels, "resigned");
        }
        Ok(())
    }

    fn lost_error(&self) -> LockError {
        LockError::LeaseLost {
            key: self.guard.key().clone(),
            fence: self.guard.fence(),
        }
    }
}

/// Who leads an election, as [`Election::leader`] and [`Observer`] report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    candidate: String,
    value: String,
    term: FencingToken,
    expires_in: Duration,
}

impl Leader {
    /// The leader's candidate label.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// The value the leader publishes.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The term (the leader's fencing token).
    pub fn term(&self) -> FencingToken {
        self.term
    }

    /// How long the term lasts unless renewed, as the store said.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// Whether `other` is the same term publishing the same value.
    fn same_as(&self, other: &Leader) -> bool {
        self.term == other.term && self.value == other.value && self.candidate == other.candidate
    }
}

impl Leader {
    /// The leadership a key's holder shows, if its label is an election's
    /// (`candidate` and value joined by the separator); `None` for a plain
    /// lock's holder. For tools that look at any key, such as
    /// `lockctl serve`.
    pub fn from_election_holder(holder: &Holder) -> Option<Self> {
        holder
            .owner()
            .contains(SEPARATOR)
            .then(|| Self::from(holder.clone()))
    }
}

impl From<Holder> for Leader {
    /// Reads an election's holder. A plain lock on the name (a label
    /// without the separator) is a leader with an empty value.
    fn from(holder: Holder) -> Self {
        let (candidate, value) = holder
            .owner()
            .split_once(SEPARATOR)
            .unwrap_or((holder.owner(), ""));
        Self {
            candidate: candidate.to_owned(),
            value: value.to_owned(),
            term: holder.fence(),
            expires_in: holder.expires_in(),
        }
    }
}

/// Watches an election: [`Observer::changed`] answers the current state
/// first, then waits for the next change.
///
/// It asks the store every [`Election::observe_every`], sooner when the
/// leader's lease could expire, and at once when the backend announces a
/// release someone waited for. States between two looks are not seen (a
/// value proclaimed and replaced within one interval), but the latest is
/// never skipped, and a term older than one already reported is never
/// reported.
#[derive(Debug)]
pub struct Observer<S: ?Sized + LockStore = dyn LockStore> {
    election: Election<S>,
    last: Option<Option<Leader>>,
    highest_term: Option<FencingToken>,
}

impl<S: ?Sized + LockStore> Observer<S> {
    /// The next state different from the last one answered (the current
    /// state on the first call): the leader, or `None` when nobody leads.
    ///
    /// # Errors
    /// Backend errors; the observer can be asked again after one.
    pub async fn changed(&mut self) -> Result<Option<Leader>, LockError> {
        let election = &self.election;
        loop {
            let signal = election.client.store().release_signal(&election.name);
            let now = election.leader().await?;
            let stale = matches!((&now, self.highest_term), (Some(leader), Some(highest)) if leader.term() < highest);
            let unchanged = match (&self.last, &now) {
                (Some(Some(last)), Some(now)) => last.same_as(now),
                (Some(None), None) => true,
                _ => false,
            };
            if !stale && !unchanged {
                if let Some(leader) = &now {
                    self.highest_term = Some(leader.term());
                }
                self.last = Some(now.clone());
                return Ok(now);
            }
            let mut delay = election.observe_every;
            if let Some(leader) = &now {
                delay = delay.min(leader.expires_in() + Duration::from_millis(1));
            }
            match signal {
                Some(signal) => {
                    tokio::select! {
                        () = signal => {}
                        () = sleep(delay) => {}
                    }
                }
                None => sleep(delay).await,
            }
        }
    }

    /// The same changes as a [`Stream`], for `StreamExt` combinators. It
    /// ends after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Option<Leader>, LockError>> {
        futures::stream::unfold(Some(self), |observer| async move {
            let mut observer = observer?;
            match observer.changed().await {
                Ok(state) => Some((Ok(state), Some(observer))),
                Err(err) => Some((Err(err), None)),
            }
        })
    }
}
