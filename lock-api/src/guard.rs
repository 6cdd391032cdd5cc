//! Guards: a held lease renewed in the background, with a loss signal.
//!
//! A [`LockGuard`] owns one background task. The task is the only thing that
//! talks to the backend about the lease after it was granted, so a renewal and
//! a release can never race each other. It renews every `TTL / 3` by default.
//! It declares the lease **lost** — cancels the loss token — as soon as either
//!
//! * a renewal answers that the lease no longer holds the key, or
//! * the local deadline passes without a confirmed renewal: the moment the
//!   last successful request was *sent*, plus the TTL, minus a safety margin.
//!
//! The second rule is what makes a paused or partitioned holder give up
//! before anyone else can take the key: the backend started counting the TTL
//! no earlier than the request was sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};

use crate::{
    FencingToken, Lease, LeaseId, LockError, LockKey, LockStore, ReleaseOutcome, RenewOutcome,
};

/// Timing of guards, set through [`LockClient`](crate::LockClient).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuardSettings {
    pub(crate) safety_margin: Option<Duration>,
    pub(crate) renewals_per_ttl: u32,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            safety_margin: None,
            renewals_per_ttl: 3,
        }
    }
}

impl GuardSettings {
    fn margin(&self, lease: &Lease) -> Duration {
        self.safety_margin.unwrap_or(lease.ttl().as_duration() / 10)
    }

    /// The last instant at which the lease may be trusted.
    fn trust_until(&self, lease: &Lease) -> Instant {
        let deadline = lease.deadline();
        deadline
            .checked_sub(self.margin(lease))
            .unwrap_or(lease.sent_at())
            .max(lease.sent_at())
    }

    fn renew_interval(&self, lease: &Lease) -> Duration {
        (lease.ttl().as_duration() / self.renewals_per_ttl).max(Duration::from_millis(1))
    }
}

type ReleaseReply = oneshot::Sender<Result<ReleaseOutcome, LockError>>;

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
/// # Ok(()) }
/// # async fn deploy(_fence: u64) {}
/// ```
#[derive(Debug)]
#[must_use = "dropping a guard releases the lock"]
pub struct LockGuard {
    key: LockKey,
    id: LeaseId,
    fence: FencingToken,
    current: watch::Receiver<Lease>,
    lost: CancellationToken,
    stop: Option<oneshot::Sender<ReleaseReply>>,
}

impl LockGuard {
    pub(crate) fn spawn<S: ?Sized + LockStore>(
        store: Arc<S>,
        lease: Lease,
        settings: GuardSettings,
    ) -> Self {
        let (lease_tx, current) = watch::channel(lease.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        let lost = CancellationToken::new();
        let guard = Self {
            key: lease.key().clone(),
            id: lease.id(),
            fence: lease.fence(),
            current,
            lost: lost.clone(),
            stop: Some(stop_tx),
        };
        tokio::spawn(keep_alive(store, lease, settings, lease_tx, lost, stop_rx));
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
        self.current.borrow().clone()
    }

    /// Whether the lease is lost (or released).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the lease is lost: a renewal found it gone, or its
    /// local deadline passed without a confirmed renewal.
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.lost.clone().cancelled_owned()
    }

    /// A token cancelled when the lease is lost or released, to hand to
    /// work that must stop then.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lost.child_token()
    }

    /// A cheap handle with the key, fence and loss token, for work running
    /// under the lock.
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle {
            key: self.key.clone(),
            fence: self.fence,
            lost: self.lost.child_token(),
        }
    }

    /// Stops renewing and releases the lease.
    ///
    /// # Errors
    /// Backend errors. A lease already lost answers
    /// [`ReleaseOutcome::NotHeld`].
    pub async fn release(mut self) -> Result<ReleaseOutcome, LockError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let stop = self
            .stop
            .take()
            .expect("stop is only taken here and in drop");
        if stop.send(reply_tx).is_err() {
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

/// What work running under a lock needs: the key, the fencing token and a
/// token that is cancelled when the lease is lost.
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    key: LockKey,
    fence: FencingToken,
    lost: CancellationToken,
}

impl LeaseHandle {
    /// The locked key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// Cancelled when the lease is lost or released.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.lost
    }
}

async fn keep_alive<S: ?Sized + LockStore>(
    store: Arc<S>,
    mut lease: Lease,
    settings: GuardSettings,
    lease_tx: watch::Sender<Lease>,
    lost: CancellationToken,
    mut stop: oneshot::Receiver<ReleaseReply>,
) {
    let mut next_renewal = lease.sent_at() + settings.renew_interval(&lease);
    let reply = loop {
        let trust_until = settings.trust_until(&lease);
        tokio::select! {
            biased;
            reply = &mut stop => break reply.ok(),
            () = sleep_until(trust_until) => {
                warn!(key = %lease.key(), fence = %lease.fence(), "lease lost: no renewal confirmed before the local deadline");
                lost.cancel();
                break (&mut stop).await.ok();
            }
            () = sleep_until(next_renewal) => {
                let sent_at = Instant::now();
                // A renewal still unanswered at the deadline is worthless: the
                // deadline arm fires on the next turn.
                let renewal = tokio::select! {
                    biased;
                    () = sleep_until(trust_until) => continue,
                    renewal = store.renew(lease.key(), lease.id(), lease.ttl()) => renewal,
                };
                match renewal {
                    Ok(RenewOutcome::Renewed) => {
                        lease = lease.renewed(lease.ttl(), sent_at);
                        lease_tx.send_replace(lease.clone());
                        next_renewal = sent_at + settings.renew_interval(&lease);
                        debug!(key = %lease.key(), fence = %lease.fence(), "renewed");
                    }
                    Ok(RenewOutcome::Lost) => {
                        warn!(key = %lease.key(), fence = %lease.fence(), "lease lost: the backend no longer has it");
                        lost.cancel();
                        break (&mut stop).await.ok();
                    }
                    Err(err) => {
                        // Keep trying until the deadline: a blip must not cost the lock.
                        let retry_in = (lease.ttl().as_duration() / 10).max(Duration::from_millis(1));
                        warn!(key = %lease.key(), error = %err, ?retry_in, "renewal failed; retrying");
                        next_renewal = Instant::now() + retry_in;
                    }
                }
            }
        }
    };
    // Release even a lease believed lost: if it was lost only by the local
    // deadline, the backend may still hold it and others should not wait.
    // Bounded: over a dead network the release would hang, and after one TTL
    // the lease is gone anyway.
    let outcome = tokio::time::timeout(
        lease.ttl().as_duration(),
        store.release(lease.key(), lease.id()),
    )
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
