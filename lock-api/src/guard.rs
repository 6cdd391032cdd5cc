//! Guards: a held lease renewed in the background, with a loss signal.
//!
//! A [`LockGuard`] owns one background task. The task is the only thing that
//! talks to the backend about the lease after it was granted, so a renewal and
//! a release can never race each other. It renews every `TTL / 3` by default.
//!
//! A lease is **lost** as soon as any of these holds:
//!
//! * a renewal answered that the lease no longer holds the key;
//! * the local deadline passed without a confirmed renewal: the moment the
//!   last successful request was *sent*, plus the TTL, minus a safety margin;
//! * the background task ended without releasing (the store panicked, the
//!   runtime shut down): nobody renews the lease any more.
//!
//! The second rule is what makes a paused or partitioned holder give up
//! before anyone else can take the key: the backend started counting the TTL
//! no earlier than the request was sent. It is judged **synchronously, on
//! every look**: [`LockGuard::is_lost`], [`LockGuard::check`],
//! [`LockGuard::lost`] and the same methods of [`LeaseHandle`] compare the
//! monotonic clock with the deadline themselves, so they are right even when
//! the background task has not run — a process stopped by `SIGSTOP` or frozen
//! between Lambda invocations, CPU-bound work on a `current_thread` runtime,
//! all workers busy. Call [`LockGuard::check`] right before each write and
//! pass the fence it returns. Only [`LockGuard::cancellation_token`] cannot
//! watch a clock: it is cancelled when the loss is first *seen*.
//!
//! # Clocks
//!
//! The deadline is on [`tokio::time::Instant`], the monotonic clock
//! (`CLOCK_MONOTONIC` on Linux). It keeps running while a process is stopped
//! or descheduled, but it does **not** advance while the machine or VM is
//! suspended (a laptop lid, a suspended or snapshotted VM, possibly a frozen
//! micro-VM): after a resume the guard may trust a lease the server let go
//! long ago. Fencing tokens still protect resources that check them; where
//! hosts suspend, keep the margin large or re-check with the backend (a
//! renewal) after a resume.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::lease::BACKEND_CLOCK_GRANULARITY;
use crate::telemetry::{self, HeldLease, Labels, LossCause};
use crate::{
    FencingToken, Lease, LeaseId, LockError, LockKey, LockStore, ReleaseOutcome, RenewOutcome, Ttl,
};

/// Timing of guards, set through [`LockClient`](crate::LockClient).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuardSettings {
    pub(crate) safety_margin: Option<Duration>,
    pub(crate) renewals_per_ttl: u32,
    /// The `namespace` label of this client's metrics.
    pub(crate) namespace: &'static str,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            safety_margin: None,
            renewals_per_ttl: 3,
            namespace: telemetry::DEFAULT_NAMESPACE,
        }
    }
}

/// The shortest step of the renewal schedule.
const MIN_RENEW_STEP: Duration = Duration::from_millis(1);

impl GuardSettings {
    pub(crate) fn labels(&self, backend: &'static str) -> Labels {
        Labels {
            backend,
            namespace: self.namespace,
        }
    }

    pub(crate) fn margin(&self, ttl: Ttl) -> Duration {
        self.safety_margin.unwrap_or(ttl.as_duration() / 10)
    }

    /// Refuses a margin and TTL the renewal schedule cannot work with, before
    /// any request: a margin of half the TTL or more leaves too little of the
    /// lease to renew in and retry a failed renewal, and a window under two
    /// renewal steps cannot be renewed at all.
    pub(crate) fn validate(&self, ttl: Ttl) -> Result<(), LockError> {
        let margin = self.margin(ttl);
        if margin >= ttl.as_duration() / 2 {
            return Err(LockError::InvalidArgument {
                name: "safety_margin",
                reason: format!(
                    "a safety margin of {margin:?} is at least half of the {:?} TTL, so a guard would \
                     stop trusting its lease before it could renew and retry; use a margin under \
                     half the TTL, or a longer TTL",
                    ttl.as_duration()
                ),
            });
        }
        let window = ttl
            .as_duration()
            .saturating_sub(BACKEND_CLOCK_GRANULARITY)
            .saturating_sub(margin);
        if window < MIN_RENEW_STEP * 2 {
            return Err(LockError::InvalidTtl {
                requested: ttl.as_duration(),
                reason: format!(
                    "a renewing guard needs at least {:?} of trusted lease (TTL less 1 ms less the \
                     {margin:?} margin) to renew in; use a longer TTL",
                    MIN_RENEW_STEP * 2
                ),
            });
        }
        Ok(())
    }

    /// The lease as the guard trusts it: with this client's margin.
    fn trusted(&self, lease: Lease) -> Lease {
        let margin = self.margin(lease.ttl());
        lease.with_safety_margin(margin)
    }

    /// When to renew after a confirmed request: every `TTL / n`, but never
    /// later than halfway through the trust window, so a failed renewal can
    /// still be retried before the deadline.
    fn renew_interval(&self, lease: &Lease) -> Duration {
        let window = lease.trusted_until() - lease.sent_at();
        (lease.ttl().as_duration() / self.renewals_per_ttl)
            .min(window / 2)
            .max(MIN_RENEW_STEP)
    }

    /// When to retry a failed renewal: soon, and at most halfway to the
    /// deadline, so one more try still fits.
    fn retry_in(&self, lease: &Lease) -> Duration {
        let left = lease
            .trusted_until()
            .saturating_duration_since(Instant::now());
        (lease.ttl().as_duration() / 10)
            .min(left / 2)
            .max(MIN_RENEW_STEP)
    }
}

type ReleaseReply = oneshot::Sender<Result<ReleaseOutcome, LockError>>;

/// How the guard's owner ends the lease: release it now, or (`expire_in`)
/// stop renewing after one last renewal for that TTL, so the key stays held
/// until then and frees itself.
#[derive(Debug)]
struct Stop {
    reply: ReleaseReply,
    expire_in: Option<Ttl>,
}

/// A held lock. Renews its lease in the background, tells you when the lease
/// is lost, and releases it on [`LockGuard::release`] — or, best effort, when
/// dropped (the release then runs on the background task; drop never blocks).
///
/// ```
/// # use lockstore_api::*;
/// # async fn demo(client: LockClient) -> Result<(), LockError> {
/// # use std::time::Duration;
/// let guard = client.acquire("deploy/prod", AcquireOptions::new(Duration::from_secs(15))).await?;
/// tokio::select! {
///     () = guard.lost() => eprintln!("lost the lock, stopping"),
///     () = deploy(guard.fence().get()) => {}
/// }
/// guard.release().await?;
///
/// // CPU-bound work that may starve the runtime: check before each write.
/// let guard = client.acquire("reindex", AcquireOptions::new(Duration::from_secs(15))).await?;
/// for batch in 0..10 {
///     let fence = guard.check()?; // LeaseLost once the local deadline passed
///     write_batch(batch, fence.get());
/// }
/// guard.release().await?;
/// # Ok(()) }
/// # async fn deploy(_fence: u64) {}
/// # fn write_batch(_batch: u32, _fence: u64) {}
/// ```
#[derive(Debug)]
#[must_use = "dropping a guard releases the lock"]
pub struct LockGuard {
    key: LockKey,
    id: LeaseId,
    fence: FencingToken,
    view: LeaseView,
    stop: Option<oneshot::Sender<Stop>>,
}

/// The lease as last confirmed, with the local deadline it gives.
#[derive(Clone, Debug)]
struct Trusted {
    lease: Lease,
    until: Instant,
}

/// What every view of a lease shares — the guard, its handles, `with_lock`:
/// the loss token and the last confirmed lease. Loss is judged here, on the
/// caller's own clock, not only by the background task, which a paused
/// process or a starved runtime may not have run for a long time.
#[derive(Clone, Debug)]
struct LeaseView {
    key: LockKey,
    fence: FencingToken,
    current: watch::Receiver<Trusted>,
    lost: CancellationToken,
}

impl LeaseView {
    fn is_lost(&self) -> bool {
        if self.lost.is_cancelled() {
            return true;
        }
        if Instant::now() >= self.current.borrow().until {
            // Sticky: once any view saw the deadline pass, the lease stays
            // lost even if a late renewal reply arrives, and the task stops.
            self.lost.cancel();
            return true;
        }
        false
    }

    fn check(&self) -> Result<FencingToken, LockError> {
        if self.is_lost() {
            Err(LockError::LeaseLost {
                key: self.key.clone(),
                fence: self.fence,
            })
        } else {
            Ok(self.fence)
        }
    }

    fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut current = self.current.clone();
        let lost = self.lost.clone();
        async move {
            let mut task_alive = true;
            loop {
                let until = current.borrow_and_update().until;
                if lost.is_cancelled() {
                    return;
                }
                if Instant::now() >= until {
                    lost.cancel();
                    return;
                }
                tokio::select! {
                    () = lost.cancelled() => return,
                    () = sleep_until(until) => {}
                    // A renewal moved the deadline: sleep again until the new one.
                    changed = current.changed(), if task_alive => task_alive = changed.is_ok(),
                }
            }
        }
    }
}

impl LockGuard {
    /// Keeps `lease` renewed in the background; with `renew_until`, never
    /// past that instant (see [`AcquireOptions::renew_until`]).
    ///
    /// [`AcquireOptions::renew_until`]: crate::AcquireOptions::renew_until
    pub(crate) fn spawn<S: ?Sized + LockStore>(
        store: Arc<S>,
        lease: Lease,
        settings: GuardSettings,
        renew_until: Option<Instant>,
    ) -> Self {
        let lease = settings.trusted(lease);
        let trusted = Trusted {
            until: lease.trusted_until(),
            lease: lease.clone(),
        };
        let (lease_tx, current) = watch::channel(trusted);
        let (stop_tx, stop_rx) = oneshot::channel();
        let lost = CancellationToken::new();
        let guard = Self {
            key: lease.key().clone(),
            id: lease.id(),
            fence: lease.fence(),
            view: LeaseView {
                key: lease.key().clone(),
                fence: lease.fence(),
                current,
                lost: lost.clone(),
            },
            stop: Some(stop_tx),
        };
        // However the task ends — a panic in the store, the runtime shutting
        // down (even before the task first ran), an abort — nobody renews the
        // lease any more: its future drops this guard, which cancels `lost`.
        let lost_when_task_ends = lost.clone().drop_guard();
        let held = HeldLease::start(settings.labels(store.backend_name()));
        tokio::spawn(async move {
            let _lost_when_task_ends = lost_when_task_ends;
            keep_alive(store, lease, settings, renew_until, lease_tx, lost, stop_rx).await;
            held.end();
        });
        guard
    }

    /// The locked key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token: pass it to whatever the lock protects.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// The secret lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.id
    }

    /// The lease as of the last successful renewal.
    pub fn lease(&self) -> Lease {
        self.view.current.borrow().lease.clone()
    }

    /// The local deadline: the last instant this guard trusts its lease
    /// (`sent + TTL − margin` of the last confirmed acquire or renewal).
    pub fn trusted_until(&self) -> Instant {
        self.view.current.borrow().until
    }

    /// Whether the lease is lost (or released): a renewal found it gone,
    /// the background task ended, or the local deadline has passed.
    ///
    /// Judged here and now on this process's monotonic clock, so it is right
    /// even when the background task has not run for a while (a paused
    /// process, CPU-bound work on a `current_thread` runtime). Once it has
    /// answered `true` it always does.
    pub fn is_lost(&self) -> bool {
        self.view.is_lost()
    }

    /// The fencing token if the lease is still trusted, else
    /// [`LockError::LeaseLost`]: a cheap, synchronous check (no request) for
    /// the moment just before a write.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when [`LockGuard::is_lost`] is true.
    pub fn check(&self) -> Result<FencingToken, LockError> {
        self.view.check()
    }

    /// Resolves when the lease is lost: a renewal found it gone, the
    /// background task ended, or its local deadline passed without a
    /// confirmed renewal. It has its own timer on the deadline, so it fires
    /// in time even if the background task never runs.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        self.view.lost()
    }

    /// A token cancelled when the lease is lost or released, to hand to
    /// work that must stop then.
    ///
    /// Best effort: a token cannot watch a clock, so it is cancelled when the
    /// loss is *seen* — by the background task, by [`LockGuard::lost`], or by
    /// any `is_lost`/`check` call. In a starved or paused process that may be
    /// after the deadline; call [`LockGuard::check`] before a write.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.view.lost.child_token()
    }

    /// Marks the lease lost, for a caller that learned it from the store
    /// (an election's refused proclamation): the background task stops.
    pub(crate) fn mark_lost(&self) {
        self.view.lost.cancel();
    }

    /// A cheap handle with the key, fence and loss signal, for work running
    /// under the lock.
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle {
            token: self.view.lost.child_token(),
            view: self.view.clone(),
        }
    }

    /// Stops renewing and releases the lease.
    ///
    /// # Errors
    /// Backend errors. A lease already lost answers
    /// [`ReleaseOutcome::NotHeld`].
    pub async fn release(self) -> Result<ReleaseOutcome, LockError> {
        self.stop(None).await
    }

    /// Stops renewing and lets the lease end `hold` from now instead of
    /// releasing it: one last renewal for `hold`, after which nobody renews
    /// it and the key frees itself. A `hold` under a millisecond releases at
    /// once; one over [`Ttl::MAX`] holds for `Ttl::MAX`. This is how a job keeps a key for a minimum time whatever its
    /// own run time (ShedLock's `lockAtLeastFor`): see
    /// [`LockClient::run_tick`](crate::LockClient::run_tick).
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the lease no longer held its key (the
    /// key may already be someone else's); backend errors, after which the
    /// lease ends by its last TTL.
    pub async fn release_after(self, hold: Duration) -> Result<(), LockError> {
        let (key, fence) = (self.key.clone(), self.fence);
        let Ok(hold) = Ttl::new(hold.min(Ttl::MAX.as_duration())) else {
            return self.release().await.map(|_| ());
        };
        match self.stop(Some(hold)).await? {
            ReleaseOutcome::Released => Ok(()),
            ReleaseOutcome::NotHeld => Err(LockError::LeaseLost { key, fence }),
        }
    }

    /// Runs `work` under this guard, then ends the lease at `keep_until`
    /// (at once if that has passed): what [`LockClient::with_lock`] and
    /// [`LockClient::run_tick`] share. `work` is dropped at its next await
    /// point when the lease is lost, and its output is dropped if the local
    /// deadline passed before it finished (it ran partly without the lock):
    /// both are [`LockError::LeaseLost`]. A failure to end the lease after
    /// work that succeeded is only logged; the lease then ends by its TTL.
    ///
    /// [`LockClient::with_lock`]: crate::LockClient::with_lock
    /// [`LockClient::run_tick`]: crate::LockClient::run_tick
    pub(crate) async fn run_then_end<F, Fut, T>(
        self,
        work: F,
        keep_until: Instant,
    ) -> Result<T, LockError>
    where
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        let handle = self.handle();
        let output = tokio::select! {
            biased;
            () = self.lost() => None,
            output = work(handle) => Some(output),
        };
        // Work that finished after the local deadline ran partly without the
        // lock, even if nothing noticed in time: say so.
        let output = output.filter(|_| !self.is_lost());
        let (key, fence) = (self.key.clone(), self.fence);
        let ended = self
            .release_after(keep_until.saturating_duration_since(Instant::now()))
            .await;
        match output {
            Some(output) => {
                if let Err(err) = ended {
                    warn!(%key, %fence, error = %err, "ending the lease after the work failed; it will expire by its TTL");
                }
                Ok(output)
            }
            None => Err(LockError::LeaseLost { key, fence }),
        }
    }

    async fn stop(mut self, expire_in: Option<Ttl>) -> Result<ReleaseOutcome, LockError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let Some(stop) = self.stop.take() else {
            return Err(task_gone());
        };
        let message = Stop {
            reply: reply_tx,
            expire_in,
        };
        if stop.send(message).is_err() {
            return Err(task_gone());
        }
        reply_rx.await.unwrap_or_else(|_| Err(task_gone()))
    }
}

fn task_gone() -> LockError {
    LockError::Backend {
        backend: "client",
        retryable: false,
        message: "the guard's background task ended before releasing (was the runtime shut down?)"
            .into(),
        source: None,
    }
}

fn release_timed_out(lease: &Lease) -> LockError {
    LockError::Backend {
        backend: "client",
        retryable: true,
        message: format!(
            "release of {} got no answer within its TTL; the lease expires on its own",
            lease.key()
        ),
        source: None,
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Dropping the sender tells the task to release on its own.
        self.stop.take();
    }
}

/// What work running under a lock needs: the key, the fencing token and the
/// loss signal, judged against the local deadline like the guard's own.
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    view: LeaseView,
    token: CancellationToken,
}

impl LeaseHandle {
    /// The locked key.
    pub fn key(&self) -> &LockKey {
        &self.view.key
    }

    /// The fencing token.
    pub fn fence(&self) -> FencingToken {
        self.view.fence
    }

    /// Whether the lease is lost, as [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.view.is_lost()
    }

    /// The fencing token if the lease is still trusted, as
    /// [`LockGuard::check`]: call it just before a write.
    ///
    /// # Errors
    /// [`LockError::LeaseLost`] when the lease is lost.
    pub fn check(&self) -> Result<FencingToken, LockError> {
        self.view.check()
    }

    /// Resolves when the lease is lost, as [`LockGuard::lost`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        self.view.lost()
    }

    /// Cancelled when the lease is lost or released — best effort, as
    /// [`LockGuard::cancellation_token`]: check [`LeaseHandle::check`]
    /// before a write.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The TTL a renewal sent at `now` asks for: the lease's own, or, when
/// `renew_until` is nearer, only the whole milliseconds left until it (the
/// backend must not count past it), marked as the last renewal. `None` once
/// less than a millisecond is left: nothing is renewed any more.
fn renewal_ttl(ttl: Ttl, renew_until: Option<Instant>, now: Instant) -> Option<(Ttl, bool)> {
    let Some(renew_until) = renew_until else {
        return Some((ttl, false));
    };
    let left = renew_until.saturating_duration_since(now);
    if left >= ttl.as_duration() {
        return Some((ttl, false));
    }
    // Floored: `Ttl::new` rounds up, which would end a hair past the cap.
    let whole_millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    Ttl::from_millis(whole_millis).ok().map(|ttl| (ttl, true))
}

async fn keep_alive<S: ?Sized + LockStore>(
    store: Arc<S>,
    mut lease: Lease,
    settings: GuardSettings,
    renew_until: Option<Instant>,
    lease_tx: watch::Sender<Trusted>,
    lost: CancellationToken,
    mut stop: oneshot::Receiver<Stop>,
) {
    let mut next_renewal = lease.sent_at() + settings.renew_interval(&lease);
    // Off after the renewal that reached `renew_until`: renewing again for
    // ever smaller remainders would only send more requests.
    let mut renewing = true;
    let labels = settings.labels(store.backend_name());
    let reply = loop {
        let trust_until = lease.trusted_until();
        tokio::select! {
            biased;
            reply = &mut stop => break reply.ok(),
            // A view saw the deadline pass: stay lost, stop renewing.
            () = lost.cancelled() => {
                telemetry::lease_lost(labels, LossCause::Deadline);
                break (&mut stop).await.ok();
            }
            () = sleep_until(trust_until) => {
                if renewing {
                    warn!(key = %lease.key(), fence = %lease.fence(), "lease lost: no renewal confirmed before the local deadline");
                    telemetry::lease_lost(labels, LossCause::Deadline);
                } else {
                    debug!(key = %lease.key(), fence = %lease.fence(), "lease ended: renewed up to its renew-until deadline and no further");
                }
                lost.cancel();
                break (&mut stop).await.ok();
            }
            () = sleep_until(next_renewal), if renewing => {
                let sent_at = Instant::now();
                let Some((ttl, last)) = renewal_ttl(lease.ttl(), renew_until, sent_at) else {
                    renewing = false;
                    continue;
                };
                // A renewal still unanswered at the deadline is worthless: the
                // deadline arm fires on the next turn.
                let renewal = tokio::select! {
                    biased;
                    () = sleep_until(trust_until) => continue,
                    () = lost.cancelled() => continue,
                    renewal = store.renew(lease.key(), lease.id(), ttl) => renewal,
                };
                telemetry::renewal(labels, telemetry::renew_outcome(&renewal));
                match renewal {
                    Ok(RenewOutcome::Renewed) => {
                        renewing = !last;
                        lease = lease.renewed(ttl, sent_at);
                        lease_tx.send_replace(Trusted {
                            lease: lease.clone(),
                            until: lease.trusted_until(),
                        });
                        next_renewal = sent_at + settings.renew_interval(&lease);
                        debug!(key = %lease.key(), fence = %lease.fence(), "renewed");
                    }
                    Ok(RenewOutcome::Lost) => {
                        warn!(key = %lease.key(), fence = %lease.fence(), "lease lost: the backend no longer has it");
                        telemetry::lease_lost(labels, LossCause::RefusedRenewal);
                        lost.cancel();
                        break (&mut stop).await.ok();
                    }
                    Err(err) => {
                        // Keep trying until the deadline: a blip must not cost the lock.
                        let retry_in = settings.retry_in(&lease);
                        warn!(key = %lease.key(), error = %err, ?retry_in, "renewal failed; retrying");
                        next_renewal = Instant::now() + retry_in;
                    }
                }
            }
        }
    };
    let (reply, expire_in) = match reply {
        Some(Stop { reply, expire_in }) => (Some(reply), expire_in),
        None => (None, None),
    };
    // Release even a lease believed lost: if it was lost only by the local
    // deadline, the backend may still hold it and others should not wait.
    // Bounded: over a dead network the release would hang, and after one TTL
    // the lease is gone anyway. A lease to be held on is renewed once for
    // the time left instead, by the same rules; a renewal the backend
    // refuses means the lease was no longer ours, which `NotHeld` says.
    // A hold is a renewal like any other: capped by `renew_until`, and a
    // release once nothing of it is left.
    let expire_in = expire_in
        .and_then(|hold| renewal_ttl(hold, renew_until, Instant::now()).map(|(ttl, _)| ttl));
    let outcome = tokio::time::timeout(lease.ttl().as_duration(), async {
        match expire_in {
            None => store.release(lease.key(), lease.id()).await,
            Some(hold) => store
                .renew(lease.key(), lease.id(), hold)
                .await
                .map(|renewed| match renewed {
                    RenewOutcome::Renewed => ReleaseOutcome::Released,
                    RenewOutcome::Lost => ReleaseOutcome::NotHeld,
                }),
        }
    })
    .await
    .unwrap_or_else(|_| Err(release_timed_out(&lease)));
    lost.cancel();
    match reply {
        Some(reply) => {
            let _ = reply.send(outcome);
        }
        None => match outcome {
            Ok(outcome) => debug!(key = %lease.key(), ?outcome, "released on drop"),
            Err(err) => {
                warn!(key = %lease.key(), error = %err, "release on drop failed; the lease will expire by its TTL")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use std::sync::atomic::Ordering;

    use tokio::time::Instant;

    use crate::test_store::{RenewBehaviour, TestStore, poll_once, stall};
    use crate::{AcquireOptions, LockClient, LockError};

    const TTL: Duration = Duration::from_secs(10);

    fn client(renew: RenewBehaviour) -> (Arc<TestStore>, LockClient<TestStore>) {
        let store = Arc::new(TestStore::new(renew));
        (Arc::clone(&store), LockClient::from_arc(store))
    }

    /// M1: a holder that was paused, or whose runtime never ran the renewal
    /// task, sees the loss the moment it looks after its local deadline.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn every_view_reports_loss_by_the_local_deadline_without_the_task() {
        let (_, client) = client(RenewBehaviour::Renew);
        let guard = client
            .acquire("paused", AcquireOptions::new(TTL))
            .await
            .unwrap();
        let handle = guard.handle();
        stall(TTL / 4);
        assert!(!guard.is_lost(), "lost well inside the trust window");
        assert_eq!(guard.check().unwrap(), guard.fence());
        assert_eq!(handle.check().unwrap(), guard.fence());
        stall(TTL);
        assert!(
            guard.is_lost(),
            "is_lost() trusted a lease past its deadline"
        );
        assert!(
            poll_once(guard.lost()).is_ready(),
            "lost() did not fire although the deadline had passed"
        );
        assert!(matches!(guard.check(), Err(LockError::LeaseLost { .. })));
        assert!(handle.is_lost() && handle.check().is_err());
        assert!(
            handle.cancellation_token().is_cancelled(),
            "the handle's token was not cancelled once loss was seen"
        );
    }

    /// M1: `with_lock` does not report success for work that finished after
    /// the deadline, though the renewal task never ran.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn with_lock_work_finishing_past_the_deadline_is_lease_lost() {
        let (_, client) = client(RenewBehaviour::Renew);
        let outcome = client
            .with_lock("starved", AcquireOptions::new(TTL), |handle| async move {
                stall(TTL * 2);
                assert!(
                    handle.check().is_err(),
                    "the work trusted a lease past its deadline"
                );
            })
            .await;
        assert!(
            matches!(outcome, Err(LockError::LeaseLost { .. })),
            "{outcome:?}"
        );
    }

    /// M2: a store that panics kills the renewal task; the guard says the
    /// lease is lost at once, long before its deadline.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn guard_reports_loss_when_its_task_panics() {
        let (_, client) = client(RenewBehaviour::Panic);
        let guard = client
            .acquire("panics", AcquireOptions::new(TTL))
            .await
            .unwrap();
        // The first renewal (at a third of the TTL) panics.
        tokio::time::sleep(TTL / 2).await;
        assert!(Instant::now() < guard.trusted_until());
        assert!(
            guard.is_lost(),
            "the renewal task died and the guard still trusts its lease"
        );
        assert!(poll_once(guard.lost()).is_ready());
    }

    /// M2: the runtime that ran the renewal task is gone; the guard outlives
    /// it and must not go on trusting a lease nobody renews.
    #[test]
    fn guard_reports_loss_when_its_runtime_shuts_down() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, client) = client(RenewBehaviour::Renew);
        let guard = runtime
            .block_on(client.acquire("outlives", AcquireOptions::new(Duration::from_secs(3600))))
            .unwrap();
        drop(runtime);
        assert!(guard.is_lost(), "no task renews this lease any more");
        assert!(guard.cancellation_token().is_cancelled());
    }

    /// M8: a margin that leaves no room for the renewal schedule is refused
    /// before any request, instead of giving a guard that flaps.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn margin_the_schedule_cannot_honour_is_rejected_before_any_request() {
        let (store, client) = client(RenewBehaviour::Renew);
        let client = client.with_safety_margin(Duration::from_millis(2500));
        let outcome = client
            .acquire("too-careful", AcquireOptions::new(Duration::from_secs(3)))
            .await;
        assert!(
            matches!(
                outcome,
                Err(LockError::InvalidArgument {
                    name: "safety_margin",
                    ..
                })
            ),
            "{outcome:?}"
        );
        let (_, default_margin) = self::client(RenewBehaviour::Renew);
        let tiny = default_margin
            .acquire("tiny", AcquireOptions::new(Duration::from_millis(2)))
            .await;
        assert!(
            matches!(tiny, Err(LockError::InvalidTtl { .. })),
            "{tiny:?}"
        );
        let outcome = client
            .with_lock(
                "too-careful",
                AcquireOptions::new(Duration::from_secs(3)),
                |_| async {},
            )
            .await;
        assert!(matches!(outcome, Err(LockError::InvalidArgument { .. })));
        assert_eq!(
            store.acquires.load(Ordering::SeqCst),
            0,
            "a request was sent"
        );
    }

    /// M8: with a wide margin the first renewal comes early enough that a
    /// failed one can be retried inside the trust window.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn wide_margin_leaves_time_to_retry_a_failed_renewal() {
        let (_, client) = client(RenewBehaviour::FailFirst(1));
        let client = client
            .with_renewals_per_ttl(2)
            .with_safety_margin(Duration::from_millis(450));
        let guard = client
            .acquire("wide-margin", AcquireOptions::new(Duration::from_secs(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!guard.is_lost(), "one failed renewal cost the lease");
        guard.release().await.unwrap();
    }

    /// M1: `lost()` has its own timer on the deadline, re-armed by every
    /// renewal: a lease that keeps being renewed never fires it.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn lost_follows_renewals_and_does_not_fire_while_renewed() {
        let (_, client) = client(RenewBehaviour::Renew);
        let guard = client
            .acquire("renewed", AcquireOptions::new(TTL))
            .await
            .unwrap();
        let first_deadline = guard.trusted_until();
        let lost = tokio::spawn(guard.lost());
        tokio::time::sleep(TTL * 5).await;
        assert!(
            !lost.is_finished(),
            "lost() fired although every renewal succeeded"
        );
        assert!(guard.trusted_until() > first_deadline);
        assert!(!guard.is_lost());
        guard.release().await.unwrap();
        // Released: the loss signal fires.
        lost.await.unwrap();
    }

    /// A guard told to renew until a deadline (a Lambda invocation's) asks
    /// for no time past it, sends nothing after it, and reports the lease
    /// lost by then; its hold at the end is capped the same way.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn renewals_stop_at_the_renew_until_deadline() {
        let (store, client) = client(RenewBehaviour::Renew);
        let deadline = Instant::now() + TTL * 5 / 2;
        let guard = client
            .acquire(
                "lambda-invocation",
                AcquireOptions::new(TTL).renew_until(deadline),
            )
            .await
            .unwrap();
        tokio::time::sleep(TTL * 5).await;
        assert!(
            guard.is_lost(),
            "the guard trusted its lease past the deadline"
        );
        assert!(guard.trusted_until() <= deadline);
        let renewals = store.renewals.lock().unwrap().clone();
        // Every TTL/3 up to the first capped renewal, and that one is the last.
        assert!((2..=6).contains(&renewals.len()), "{renewals:?}");
        for (at, ttl) in &renewals {
            assert!(
                *at + ttl.as_duration() <= deadline,
                "a renewal at {:?} asked for {ttl:?}, past the deadline {:?} away",
                at.duration_since(renewals[0].0),
                deadline.duration_since(renewals[0].0),
            );
        }
        let (last_at, last_ttl) = *renewals.last().unwrap();
        assert!(
            last_at + last_ttl.as_duration() + Duration::from_millis(1) > deadline,
            "the last renewal did not reach the deadline"
        );

        // A hold past the deadline ends at it; past the deadline, a release.
        let deadline = Instant::now() + TTL;
        let guard = client
            .acquire(
                "hold-capped",
                AcquireOptions::new(TTL).renew_until(deadline),
            )
            .await
            .unwrap();
        guard.release_after(TTL * 3).await.unwrap();
        let (at, ttl) = *store.renewals.lock().unwrap().last().unwrap();
        assert!(
            at + ttl.as_duration() <= deadline,
            "the hold outlived the deadline"
        );
    }
}
