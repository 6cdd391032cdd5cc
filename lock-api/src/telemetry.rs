//! Metrics: what the client layer records, through the [`metrics`] crate's
//! facade, when the `metrics` cargo feature is on.
//!
//! The application installs the exporter it wants (Prometheus,
//! OpenTelemetry, StatsD: any `metrics` recorder); lockstore only names and
//! records. With the feature off nothing is recorded and the `metrics` crate
//! is not linked: every function here is then an empty inline function.
//!
//! Every series has the labels `backend` (the store's
//! [`backend_name`](crate::LockStore::backend_name): `memory`, `redis`,
//! `postgres`, `sqlite`, `dynamodb`) and `namespace` (`default`, or what the
//! application set with [`LockClient::with_metrics_namespace`] or
//! [`Ledger::with_metrics_namespace`]). A key is **never** a label: keys can
//! hold customer data, and one series per key would explode the number of
//! series. The `tracing` spans of the same operations (`lockstore.acquire`,
//! `lockstore.renew`, `lockstore.begin`) carry the same `backend`,
//! `namespace` and `outcome` values, with the key added.
//!
//! | name | type | unit | labels | recorded when |
//! |---|---|---|---|---|
//! | `lockstore_acquire_total` | counter | acquires | backend, namespace, outcome = `granted` \| `refused` \| `timed_out` \| `error` | an acquire call ends: granted; refused (no waiting asked, the key was held); timed out (the wait ran out); error (a backend error ended it). Input errors (a bad key or TTL) are not counted |
//! | `lockstore_acquire_duration_seconds` | histogram | seconds | backend, namespace, outcome | the same, with the call's whole duration, waiting included |
//! | `lockstore_acquire_wait_seconds` | histogram | seconds | backend, namespace | a granted acquire: the time from the call until the granting attempt was sent (0 when the key was free) |
//! | `lockstore_renewals_total` | counter | renewals | backend, namespace, outcome = `renewed` \| `refused` \| `error` | a guard's background renewal (of a lock or a run) or [`LockClient::renew`] got its answer: renewed; refused (the backend no longer has the lease); error (it failed, and is retried while the lease is trusted) |
//! | `lockstore_leases_lost_total` | counter | leases | backend, namespace, cause = `deadline` \| `refused_renewal` \| `task_death` | a guard's lease (a lock's or a run's) is lost: its local deadline passed without a confirmed renewal; a renewal was refused; its background task ended without releasing (the runtime shut down, the store panicked) |
//! | `lockstore_leases_held` | gauge | leases | backend, namespace | guards (of locks and runs) whose background task is live: +1 when granted, −1 when the task ends, however it ends |
//! | `lockstore_permit_acquire_total` | counter | acquires | backend, namespace, outcome = `granted` \| `refused` \| `timed_out` \| `error` | a [`Semaphore`] acquire call ends, as `lockstore_acquire_total` for locks. A held permit counts in `lockstore_leases_held`, and its renewals and loss in the lease series above |
//! | `lockstore_permit_acquire_duration_seconds` | histogram | seconds | backend, namespace, outcome | the same, with the call's whole duration, waiting included |
//! | `lockstore_leadership_changes_total` | counter | terms | backend, namespace, change = `won` \| `resigned` | an [`Election`] candidate won a term (its campaign's acquire was granted), or resigned one with the store's confirmation. A campaign's attempts count in `lockstore_acquire_*`, a held term in `lockstore_leases_held`, and a term lost in `lockstore_leases_lost_total` |
//! | `lockstore_ledger_transitions_total` | counter | transitions | backend, namespace, status = `running` \| `succeeded` \| `failed` \| `ignored` \| `pending` | a ledger record entered a status through this client: a run started (`running`), finished (`succeeded`, `failed`, `ignored`, including a run abandoned by a dropped guard), was enqueued or retried (`pending`) |
//! | `lockstore_ledger_takeovers_total` | counter | runs | backend, namespace | a run started here by taking over a stuck run (running under another lease whose lease had expired), as the backend's begin reply says: every `begin` counts, plain or through `run_once`, the consumer, `lockctl run` and the Lambda handler |
//! | `lockstore_ledger_stale_finishes_total` | counter | finishes | backend, namespace | a finish (succeed or fail) was refused because the run's lease no longer held the record: the run was taken over, retried or purged |
//! | `lockstore_consumer_messages_total` | counter | messages | backend, namespace, outcome = `ran` \| `replayed` \| `in_progress` \| `failed` \| `gave_up` \| `ignored` \| `rejected` \| `error` \| `batch_failed` | [`IdempotentConsumer`] decided a message's outcome ([`Processed`]'s variants), or (`batch_failed`) a configuration or permanent error failed the batch at that message |
//!
//! [`metrics`]: https://docs.rs/metrics
//! [`LockClient::with_metrics_namespace`]: crate::LockClient::with_metrics_namespace
//! [`Ledger::with_metrics_namespace`]: crate::ledger::Ledger::with_metrics_namespace
//! [`LockClient::renew`]: crate::LockClient::renew
//! [`IdempotentConsumer`]: crate::ledger::IdempotentConsumer
//! [`Processed`]: crate::ledger::Processed
//! [`Semaphore`]: crate::semaphore::Semaphore
//! [`Election`]: crate::election::Election

use std::time::Duration;

use crate::ledger::{FinishOutcome, Processed, RunStatus};
use crate::{LockError, RenewOutcome, Wait};

/// The `namespace` label when the application set none.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// The two labels every series has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Labels {
    pub(crate) backend: &'static str,
    pub(crate) namespace: &'static str,
}

/// Why a guard's lease was lost.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LossCause {
    Deadline,
    RefusedRenewal,
    TaskDeath,
}

/// The `outcome` label of an acquire call that ended with `result`, as the
/// metric and the span say it.
pub(crate) fn acquire_outcome<T>(wait: Wait, result: &Result<T, LockError>) -> &'static str {
    match result {
        Ok(_) => "granted",
        Err(LockError::Timeout { .. }) if wait == Wait::No => "refused",
        Err(LockError::Timeout { .. }) => "timed_out",
        Err(_) => "error",
    }
}

/// The `outcome` label of a renewal's answer.
pub(crate) fn renew_outcome(answer: &Result<RenewOutcome, LockError>) -> &'static str {
    match answer {
        Ok(RenewOutcome::Renewed) => "renewed",
        Ok(RenewOutcome::Lost) => "refused",
        Err(_) => "error",
    }
}

/// An acquire call ended with `outcome` after `elapsed`; a granted one
/// waited `waited` before its granting attempt was sent.
pub(crate) fn acquire(
    labels: Labels,
    outcome: &'static str,
    elapsed: Duration,
    waited: Option<Duration>,
) {
    let with_outcome = labels.with("outcome", outcome);
    imp::count("lockstore_acquire_total", &with_outcome, 1);
    imp::observe("lockstore_acquire_duration_seconds", &with_outcome, elapsed);
    if let Some(waited) = waited {
        imp::observe("lockstore_acquire_wait_seconds", &labels.pair(), waited);
    }
}

/// A semaphore's acquire call ended with `outcome` after `elapsed`.
pub(crate) fn permit_acquire(labels: Labels, outcome: &'static str, elapsed: Duration) {
    let with_outcome = labels.with("outcome", outcome);
    imp::count("lockstore_permit_acquire_total", &with_outcome, 1);
    imp::observe(
        "lockstore_permit_acquire_duration_seconds",
        &with_outcome,
        elapsed,
    );
}

/// A candidate won a term, or resigned one.
pub(crate) fn leadership(labels: Labels, change: &'static str) {
    imp::count(
        "lockstore_leadership_changes_total",
        &labels.with("change", change),
        1,
    );
}

/// A renewal got its answer: `renewed`, `refused` or `error`.
pub(crate) fn renewal(labels: Labels, outcome: &'static str) {
    imp::count(
        "lockstore_renewals_total",
        &labels.with("outcome", outcome),
        1,
    );
}

/// A guard's lease was lost.
pub(crate) fn lease_lost(labels: Labels, cause: LossCause) {
    let cause = match cause {
        LossCause::Deadline => "deadline",
        LossCause::RefusedRenewal => "refused_renewal",
        LossCause::TaskDeath => "task_death",
    };
    imp::count(
        "lockstore_leases_lost_total",
        &labels.with("cause", cause),
        1,
    );
}

/// A guard's background task, from its start to its end, however it ends:
/// counts the lease as held meanwhile, and reports a task that ended
/// without reaching its end (dropped mid-way: the runtime shut down, the
/// store panicked) as a lease lost by `task_death`.
#[derive(Debug)]
pub(crate) struct HeldLease {
    labels: Labels,
    ended: bool,
}

impl HeldLease {
    pub(crate) fn start(labels: Labels) -> Self {
        imp::gauge_add("lockstore_leases_held", &labels.pair(), 1.0);
        Self {
            labels,
            ended: false,
        }
    }

    /// The task reached its end (released, or stopped after a loss it
    /// counted itself).
    pub(crate) fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        imp::gauge_add("lockstore_leases_held", &self.labels.pair(), -1.0);
        if !self.ended {
            lease_lost(self.labels, LossCause::TaskDeath);
        }
    }
}

/// A ledger record entered `status` through this client.
pub(crate) fn transition(labels: Labels, status: RunStatus) {
    imp::count(
        "lockstore_ledger_transitions_total",
        &labels.with("status", status.as_str()),
        1,
    );
}

/// A finish got its answer: the record's new status, or a stale finisher
/// refused.
pub(crate) fn finished(labels: Labels, answer: &Result<FinishOutcome, LockError>) {
    match answer {
        Ok(FinishOutcome::Finished(status)) => transition(labels, *status),
        Ok(FinishOutcome::NotHeld) => stale_finish(labels),
        Err(_) => {}
    }
}

/// A run started by taking over a stuck one (the begin reply's `took_over`).
pub(crate) fn takeover(labels: Labels) {
    imp::count("lockstore_ledger_takeovers_total", &labels.pair(), 1);
}

/// A finish was refused: the run's lease no longer held the record.
pub(crate) fn stale_finish(labels: Labels) {
    imp::count("lockstore_ledger_stale_finishes_total", &labels.pair(), 1);
}

/// The `outcome` label of a message the consumer processed, or of the
/// message whose error failed the batch.
pub(crate) fn consumer_outcome<T>(processed: &Result<Processed<T>, LockError>) -> &'static str {
    match processed {
        Ok(Processed::Ran(_)) => "ran",
        Ok(Processed::Replayed(_)) => "replayed",
        Ok(Processed::InProgress(_)) => "in_progress",
        Ok(Processed::Failed(_)) => "failed",
        Ok(Processed::GaveUp(_)) => "gave_up",
        Ok(Processed::Ignored(_)) => "ignored",
        Ok(Processed::Rejected(_)) => "rejected",
        Ok(Processed::Error(_)) => "error",
        Err(_) => "batch_failed",
    }
}

/// The consumer decided a message's outcome.
pub(crate) fn consumer_message(labels: Labels, outcome: &'static str) {
    imp::count(
        "lockstore_consumer_messages_total",
        &labels.with("outcome", outcome),
        1,
    );
}

type Pairs<const N: usize> = [(&'static str, &'static str); N];

impl Labels {
    fn pair(self) -> Pairs<2> {
        [("backend", self.backend), ("namespace", self.namespace)]
    }

    fn with(self, name: &'static str, value: &'static str) -> Pairs<3> {
        [
            ("backend", self.backend),
            ("namespace", self.namespace),
            (name, value),
        ]
    }
}

/// The only place that knows whether the `metrics` crate is linked.
#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    pub(super) fn count(name: &'static str, labels: &[(&'static str, &'static str)], by: u64) {
        metrics::counter!(name, labels).increment(by);
    }

    pub(super) fn observe(
        name: &'static str,
        labels: &[(&'static str, &'static str)],
        value: Duration,
    ) {
        metrics::histogram!(name, labels).record(value.as_secs_f64());
    }

    pub(super) fn gauge_add(name: &'static str, labels: &[(&'static str, &'static str)], by: f64) {
        metrics::gauge!(name, labels).increment(by);
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    #[inline(always)]
    pub(super) fn count(_: &'static str, _: &[(&'static str, &'static str)], _: u64) {}

    #[inline(always)]
    pub(super) fn observe(_: &'static str, _: &[(&'static str, &'static str)], _: Duration) {}

    #[inline(always)]
    pub(super) fn gauge_add(_: &'static str, _: &[(&'static str, &'static str)], _: f64) {}
}
