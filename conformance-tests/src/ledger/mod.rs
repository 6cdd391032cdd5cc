//! The ledger's conformance cases: the run-once contract (`CONTRACT.md`,
//! "The run-once ledger"), checked against every backend that implements
//! [`LedgerStore`].
//!
//! Like the lock cases, each is a `pub async fn(Ctx)` that panics with a
//! message naming the broken promise, and [`ledger_suite!`](crate::ledger_suite)
//! registers every one of them.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::ledger::{
    Begin, BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest,
    IdempotentConsumer, Ledger, LedgerStore, MAX_ERROR_BYTES, MAX_RESULT_BYTES, Message, Order,
    Processed, RequestHash, RetryOutcome, RunError, RunFailure, RunOnce, RunOptions, RunQuery,
    RunRecord, RunStatus, StatusFilter, unix_millis,
};
use lockstore_api::{
    AcquireOptions, Backoff, FencingToken, LeaseId, LockClient, LockError, LockKey, OwnerLabel,
    RenewOutcome, Ttl,
};

use crate::Ctx;

mod concurrency;
mod model;

pub use concurrency::ledger_concurrent_workers_run_each_key_once;
pub use model::ledger_model_based_sequences;

/// Expands the ledger case list into tests; see [`crate::ledger_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __ledger_cases {
    ($backend:ident, $harness:expr) => {
        $crate::__ledger_cases!(@emit $backend, $harness, [
            (ledger_begin_on_a_new_key_starts_the_first_attempt, Default),
            (ledger_success_is_stored_and_replayed, Default),
            (ledger_live_run_refuses_a_second_begin_naming_the_holder, Default),
            (ledger_retried_begin_with_same_lease_id_keeps_the_run, Default),
            (ledger_retried_begin_after_its_own_lease_expired_keeps_the_run, Default),
            (ledger_crashed_run_is_taken_over_after_its_lease_expires, Default),
            (ledger_begin_says_whether_it_took_over_a_stuck_run, Default),
            (ledger_stale_finisher_changes_nothing, Default),
            (ledger_renew_extends_only_the_live_run, Default),
            (ledger_retryable_failure_allows_another_attempt, Default),
            (ledger_attempt_limit_makes_the_key_ignored, Default),
            (ledger_fatal_failure_ignores_the_key_at_once, Default),
            (ledger_failed_key_out_of_attempts_is_not_started, Default),
            (ledger_stuck_run_without_attempts_left_waits_for_an_operator, Default),
            (ledger_error_history_keeps_the_last_attempts, Default),
            (ledger_finish_enforces_size_limits, Default),
            (ledger_enqueue_creates_pending_and_never_resets, Default),
            (ledger_retry_requeues_only_failed_ignored_or_stuck, Default),
            (ledger_request_hash_mismatch_is_refused, Default),
            (ledger_purge_removes_only_old_finished_records, Default),
            (ledger_fences_increase_across_takeover_retry_and_purge, Default),
            (ledger_query_filters_orders_and_pages, Default),
            (ledger_wait_returns_when_the_run_finishes, Default),
            (ledger_wait_all_waits_for_every_key, Default),
            (ledger_wait_times_out_naming_the_holder, Default),
            (ledger_run_once_reports_every_outcome, Default),
            (ledger_run_once_waits_for_a_run_elsewhere, Default),
            (ledger_run_once_waiting_takes_over_a_crashed_run, Default),
            (ledger_dropped_run_records_an_abandoned_attempt, Default),
            (ledger_consumer_runs_a_redelivered_batch_once, Default),
            (ledger_invalid_input_is_rejected_before_any_request, Default),
            (ledger_namespaces_are_independent, Default),
            (ledger_records_are_apart_from_locks, Default),
            (ledger_model_based_sequences, Default),
            (ledger_concurrent_workers_run_each_key_once, MultiThread),
        ]);
    };
    (@emit $backend:ident, $harness:expr, [$(($case:ident, $runtime:ident)),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::run_case($harness, $crate::Runtime::$runtime, |ctx| {
                        ::std::boxed::Box::pin($crate::ledger::$case(ctx))
                    });
                }
            )*
        }
    };
}

// ---------------------------------------------------------------- helpers

pub(crate) fn key(name: &str) -> LockKey {
    LockKey::new(name).expect("test keys are valid")
}

/// A TTL no case waits out.
pub(crate) fn long_ttl(ctx: &Ctx) -> Duration {
    ctx.profile().short_ttl * 25
}

pub(crate) fn begin_request(key: &LockKey, ttl: Duration, owner: &str, max: u32) -> BeginRequest {
    BeginRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(ttl).expect("test TTLs are valid"),
        owner: OwnerLabel::new(owner).expect("test owners are valid"),
        max_attempts: max,
        request_hash: None,
    }
}

/// Begins `request`, failing the case unless a run started.
pub(crate) async fn must_start(
    ledger: &dyn LedgerStore,
    request: &BeginRequest,
) -> (FencingToken, u32) {
    match ledger.begin(request).await {
        Ok(BeginOutcome::Started { fence, attempt, .. }) => (fence, attempt),
        Ok(BeginOutcome::Existing(record)) => panic!(
            "{} could not start {}: the record is {:?}",
            request.owner.as_str(),
            request.key,
            record
        ),
        Err(err) => panic!("begin of {} failed: {err}", request.key),
    }
}

/// Begins `request`, failing the case unless a run started; with whether
/// the store says it took over a stuck run.
pub(crate) async fn must_start_telling(
    ledger: &dyn LedgerStore,
    request: &BeginRequest,
) -> (FencingToken, u32, bool) {
    match ledger.begin(request).await {
        Ok(BeginOutcome::Started {
            fence,
            attempt,
            took_over,
        }) => (fence, attempt, took_over),
        Ok(BeginOutcome::Existing(record)) => panic!(
            "{} could not start {}: the record is {:?}",
            request.owner.as_str(),
            request.key,
            record
        ),
        Err(err) => panic!("begin of {} failed: {err}", request.key),
    }
}

/// Begins `request`, failing the case if a run started.
pub(crate) async fn must_refuse(ledger: &dyn LedgerStore, request: &BeginRequest) -> RunRecord {
    match ledger.begin(request).await {
        Ok(BeginOutcome::Existing(record)) => record,
        Ok(BeginOutcome::Started { fence, attempt, .. }) => panic!(
            "{} started {} (fence {fence}, attempt {attempt}) although it must not run",
            request.owner.as_str(),
            request.key
        ),
        Err(err) => panic!("begin of {} failed: {err}", request.key),
    }
}

pub(crate) async fn finish(
    ledger: &dyn LedgerStore,
    request: &BeginRequest,
    finish: Finish,
) -> FinishOutcome {
    ledger
        .finish(&FinishRequest {
            key: request.key.clone(),
            lease_id: request.lease_id,
            finish,
        })
        .await
        .unwrap_or_else(|err| panic!("finish of {} failed: {err}", request.key))
}

pub(crate) fn succeeded(result: &[u8]) -> Finish {
    Finish::Succeeded {
        result: Some(result.to_vec()),
    }
}

pub(crate) fn failed(attempt: u32, message: &str, retryable: bool) -> Finish {
    Finish::Failed {
        error: RunError::new(attempt, message, retryable),
    }
}

pub(crate) async fn record(ledger: &dyn LedgerStore, key: &LockKey) -> RunRecord {
    ledger
        .get(key)
        .await
        .unwrap_or_else(|err| panic!("get of {key} failed: {err}"))
        .unwrap_or_else(|| panic!("{key} has no record"))
}

fn quick_backoff(ctx: &Ctx) -> Backoff {
    Backoff::new(Duration::from_millis(5), ctx.profile().short_ttl / 4)
}

// ---------------------------------------------------------------- begin

/// Begin on a key without a record starts attempt 1 with a lease, and the
/// record says so: running, the owner, the fence, time left on the lease.
pub async fn ledger_begin_on_a_new_key_starts_the_first_attempt(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("first");
    assert!(
        ledger.get(&k).await.unwrap().is_none(),
        "a new key has a record"
    );
    let ttl = long_ttl(&ctx);
    let request = begin_request(&k, ttl, "worker-a", 3);
    let (fence, attempt) = must_start(&*ledger, &request).await;
    assert_eq!(attempt, 1);
    let record = record(&*ledger, &k).await;
    assert_eq!(record.status, RunStatus::Running);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.max_attempts, 3);
    assert_eq!(record.fence, Some(fence));
    assert_eq!(record.owner.as_deref(), Some("worker-a"));
    let left = record
        .lease_expires_in
        .expect("a live run reports its lease");
    // A backend on a wall clock (SQLite) reads it in whole milliseconds at
    // begin and again at get; a clock slewed back between the two reads shows
    // a millisecond or two more than the TTL. More than that is a bug.
    let slack = Duration::from_millis(20);
    assert!(
        left <= ttl + slack,
        "lease reports {left:?} left of a {ttl:?} TTL"
    );
    assert!(
        left + ctx.profile().tolerance >= ttl.saturating_sub(ctx.profile().short_ttl),
        "a fresh lease of {ttl:?} reports only {left:?} left"
    );
    assert!(record.result.is_none() && record.errors.is_empty() && record.finished_at.is_none());
    assert!(record.updated_at >= record.created_at);
    let holder = record.holder().expect("a live run has a holder");
    assert_eq!(holder.fence(), fence);
}

/// Succeed stores the result and ends the run; every later begin answers
/// with the stored result instead of running again.
pub async fn ledger_success_is_stored_and_replayed(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("etl/2026-11-23");
    let first = begin_request(&k, long_ttl(&ctx), "worker-a", 3);
    let (fence, _) = must_start(&*ledger, &first).await;
    assert_eq!(
        finish(&*ledger, &first, succeeded(b"{\"rows\":42}")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    for owner in ["worker-b", "worker-c"] {
        let again = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), owner, 3)).await;
        assert_eq!(again.status, RunStatus::Succeeded);
        assert_eq!(again.result.as_deref(), Some(&b"{\"rows\":42}"[..]));
        assert_eq!(
            again.fence,
            Some(fence),
            "the record names the run that succeeded"
        );
        assert_eq!(again.attempts, 1);
        assert!(again.lease_expires_in.is_none());
        assert!(
            again.finished_at.is_some(),
            "a finished record has a finish time"
        );
    }
    // A second finish by the same run changes nothing.
    assert_eq!(
        finish(&*ledger, &first, succeeded(b"other")).await,
        FinishOutcome::NotHeld
    );
    assert_eq!(
        record(&*ledger, &k).await.result.as_deref(),
        Some(&b"{\"rows\":42}"[..])
    );
}

/// While a run's lease is live, a second begin starts nothing and names the
/// holder (owner, fence, time left) in the same reply.
pub async fn ledger_live_run_refuses_a_second_begin_naming_the_holder(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("busy");
    let first = begin_request(&k, long_ttl(&ctx), "worker-a", 3);
    let (fence, _) = must_start(&*ledger, &first).await;
    let seen = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), "worker-b", 3)).await;
    assert_eq!(seen.status, RunStatus::Running);
    assert_eq!(seen.attempts, 1, "a refused begin counted an attempt");
    let holder = seen.holder().expect("the refusal names the live holder");
    assert_eq!(holder.owner(), "worker-a");
    assert_eq!(holder.fence(), fence);
    assert!(holder.expires_in() > Duration::ZERO);
}

/// A begin retried with the same lease id (its reply was lost) finds its
/// own run: same fence, same attempt, no second run.
pub async fn ledger_retried_begin_with_same_lease_id_keeps_the_run(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("retried");
    let request = begin_request(&k, long_ttl(&ctx), "worker-a", 3);
    let (fence, attempt) = must_start(&*ledger, &request).await;
    let (again_fence, again_attempt) = must_start(&*ledger, &request).await;
    assert_eq!((again_fence, again_attempt), (fence, attempt));
    assert_eq!(record(&*ledger, &k).await.attempts, 1);
    assert_eq!(
        finish(&*ledger, &request, succeeded(b"ok")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
}

/// The retry of a `begin` whose reply was lost arrives after the run's own
/// lease expired (a TTL shorter than the request timeout), and nobody took
/// over: it is still the same request, so the run keeps its attempt and its
/// fence instead of taking itself over (CONTRACT.md #6).
pub async fn ledger_retried_begin_after_its_own_lease_expired_keeps_the_run(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("retried-late");
    let request = begin_request(&k, ctx.profile().short_ttl, "worker-a", 3);
    let (fence, attempt) = must_start(&*ledger, &request).await;
    ctx.sleep_past_short_ttl().await;
    let expired = record(&*ledger, &k).await;
    assert!(
        expired.is_stuck(),
        "the first lease has not expired yet: {expired:?}"
    );
    let (again_fence, again_attempt) = must_start(&*ledger, &request).await;
    assert_eq!(
        (again_fence, again_attempt),
        (fence, attempt),
        "the late retry started a new attempt"
    );
    let kept = record(&*ledger, &k).await;
    assert_eq!((kept.attempts, kept.fence), (1, Some(fence)));
    assert_eq!(
        finish(&*ledger, &request, succeeded(b"ok")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
}

/// A run whose worker crashed (stopped renewing) is taken over once its
/// lease expires, and not before: attempt 2, a higher fence.
pub async fn ledger_crashed_run_is_taken_over_after_its_lease_expires(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("crashed");
    let crashed = begin_request(&k, ctx.profile().short_ttl, "crashed", 3);
    let (old_fence, _) = must_start(&*ledger, &crashed).await;
    // (That a live run refuses a second begin is its own case, on a long
    // lease: checking it here would race the short lease on a busy machine.)
    ctx.sleep_past_short_ttl().await;
    let stuck = record(&*ledger, &k).await;
    assert!(
        stuck.is_stuck(),
        "an expired run is not reported stuck: {stuck:?}"
    );
    let taker = begin_request(&k, long_ttl(&ctx), "taker", 3);
    let (fence, attempt) = must_start(&*ledger, &taker).await;
    assert!(
        fence > old_fence,
        "takeover fence {fence} not above {old_fence}"
    );
    assert_eq!(attempt, 2, "the crashed run counts as an attempt");
    assert_eq!(record(&*ledger, &k).await.owner.as_deref(), Some("taker"));
}

/// Begin says whether it took over: `took_over` is true exactly for a start
/// over a stuck run (running under another lease id, lease expired), which
/// also gets a higher fence and the next attempt; false for a new key, a
/// pending record, a retry after a retryable failure, and a retried begin
/// with the same lease id, live or expired.
pub async fn ledger_begin_says_whether_it_took_over_a_stuck_run(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let short = ctx.profile().short_ttl;
    let k = key("took-over");
    let first = begin_request(&k, long_ttl(&ctx), "first", 5);
    let (_, attempt, took_over) = must_start_telling(&*ledger, &first).await;
    assert_eq!(attempt, 1);
    assert!(!took_over, "a begin of a new key said it took over");
    let (_, _, took_over) = must_start_telling(&*ledger, &first).await;
    assert!(
        !took_over,
        "a retried begin of a live run said it took over"
    );
    assert_eq!(
        finish(&*ledger, &first, failed(1, "flaky", true)).await,
        FinishOutcome::Finished(RunStatus::Failed)
    );
    let second = begin_request(&k, short, "second", 5);
    let (second_fence, attempt, took_over) = must_start_telling(&*ledger, &second).await;
    assert_eq!(attempt, 2);
    assert!(!took_over, "a begin of a failed record said it took over");

    // Another key whose own run expires over the same wait.
    let own = key("took-over-own");
    let late = begin_request(&own, short, "late", 5);
    let (late_fence, _, _) = must_start_telling(&*ledger, &late).await;
    let queued = key("took-over-pending");
    assert_eq!(
        ledger.enqueue(&queued, None).await.unwrap(),
        EnqueueOutcome::Created
    );
    let (_, _, took_over) =
        must_start_telling(&*ledger, &begin_request(&queued, long_ttl(&ctx), "q", 5)).await;
    assert!(!took_over, "a begin of a pending record said it took over");

    ctx.sleep_past_short_ttl().await;
    let stuck = record(&*ledger, &k).await;
    assert!(
        stuck.is_stuck(),
        "the second run is not stuck yet: {stuck:?}"
    );
    let taker = begin_request(&k, long_ttl(&ctx), "taker", 5);
    let (fence, attempt, took_over) = must_start_telling(&*ledger, &taker).await;
    assert!(
        took_over,
        "a begin over a stuck run did not say it took over"
    );
    assert_eq!(attempt, 3, "the takeover is the next attempt");
    assert!(
        fence > second_fence,
        "takeover fence {fence} not above {second_fence}"
    );
    let (_, _, took_over) = must_start_telling(&*ledger, &taker).await;
    assert!(
        !took_over,
        "a retried begin of the run that took over said it took over again"
    );

    let (fence, _, took_over) = must_start_telling(&*ledger, &late).await;
    assert_eq!(fence, late_fence, "a late retry started a new run");
    assert!(
        !took_over,
        "a retried begin that found its own expired run said it took over"
    );
}

/// A finisher whose run was taken over changes nothing and is told so; the
/// new run's outcome stands.
pub async fn ledger_stale_finisher_changes_nothing(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("stale");
    let stale = begin_request(&k, ctx.profile().short_ttl, "paused", 5);
    must_start(&*ledger, &stale).await;
    ctx.sleep_past_short_ttl().await;
    let fresh = begin_request(&k, long_ttl(&ctx), "fresh", 5);
    let (fence, _) = must_start(&*ledger, &fresh).await;
    assert_eq!(
        finish(&*ledger, &stale, succeeded(b"stale result")).await,
        FinishOutcome::NotHeld,
        "a stale success overwrote a newer run"
    );
    assert_eq!(
        finish(&*ledger, &stale, failed(1, "stale failure", false)).await,
        FinishOutcome::NotHeld,
        "a stale failure overwrote a newer run"
    );
    let now = record(&*ledger, &k).await;
    assert_eq!(now.status, RunStatus::Running);
    assert_eq!(now.fence, Some(fence));
    assert!(now.result.is_none() && now.errors.is_empty());
    assert_eq!(
        ledger
            .renew_run(&k, stale.lease_id, Ttl::new(long_ttl(&ctx)).unwrap())
            .await
            .unwrap(),
        RenewOutcome::Lost
    );
    assert_eq!(
        finish(&*ledger, &fresh, succeeded(b"fresh result")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    assert_eq!(
        record(&*ledger, &k).await.result.as_deref(),
        Some(&b"fresh result"[..])
    );
}

/// `renew_run` extends the live run only: a renewed run outlives its first
/// TTL; a foreign lease id, a finished run or an expired one answer `Lost`.
pub async fn ledger_renew_extends_only_the_live_run(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let short = ctx.profile().short_ttl;
    // Three short TTLs to renew in. Whether the first lease was still live
    // when the renewal arrived is decided only where the renewal's reply came
    // within it (less the tolerance) of the begin's send; a round in which
    // a busy machine was slower than that starts over on a fresh key.
    let first = short * 3;
    let long = Ttl::new(long_ttl(&ctx)).unwrap();
    let (k, run) = 'rounds: {
        for round in 0..10 {
            let k = key(&format!("renewed-{round}"));
            let run = begin_request(&k, first, "worker", 3);
            let sent = tokio::time::Instant::now();
            must_start(&*ledger, &run).await;
            assert_eq!(
                ledger
                    .renew_run(&k, LeaseId::random(), Ttl::new(short).unwrap())
                    .await
                    .unwrap(),
                RenewOutcome::Lost,
                "a forged lease id renewed a run"
            );
            match ledger.renew_run(&k, run.lease_id, long).await.unwrap() {
                RenewOutcome::Renewed => break 'rounds (k, run),
                RenewOutcome::Lost
                    if !crate::cases::surely_live(
                        &ctx,
                        sent,
                        first,
                        tokio::time::Instant::now(),
                    ) => {}
                RenewOutcome::Lost => panic!("a live run must renew"),
            }
        }
        panic!("ten rounds in a row were too slow to tell whether a run renews");
    };
    ctx.sleep(first + ctx.profile().tolerance).await;
    let live = record(&*ledger, &k).await;
    assert!(!live.is_stuck(), "a renewed run expired by its first TTL");
    must_refuse(&*ledger, &begin_request(&k, short, "other", 3)).await;
    assert_eq!(
        finish(&*ledger, &run, succeeded(b"")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    assert_eq!(
        ledger.renew_run(&k, run.lease_id, long).await.unwrap(),
        RenewOutcome::Lost
    );

    let expired_key = key("expired");
    let expired = begin_request(&expired_key, short, "worker", 3);
    must_start(&*ledger, &expired).await;
    ctx.sleep_past_short_ttl().await;
    assert_eq!(
        ledger
            .renew_run(&expired_key, expired.lease_id, long)
            .await
            .unwrap(),
        RenewOutcome::Lost,
        "an expired run was renewed"
    );
}

// ---------------------------------------------------------------- failure

/// A retryable failure leaves the key `failed` with its error, and the next
/// begin runs attempt 2.
pub async fn ledger_retryable_failure_allows_another_attempt(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("flaky");
    let first = begin_request(&k, long_ttl(&ctx), "worker", 3);
    must_start(&*ledger, &first).await;
    assert_eq!(
        finish(&*ledger, &first, failed(1, "connection reset", true)).await,
        FinishOutcome::Finished(RunStatus::Failed)
    );
    let failed_record = record(&*ledger, &k).await;
    assert_eq!(failed_record.status, RunStatus::Failed);
    assert_eq!(
        failed_record.last_error().map(|e| e.message.as_str()),
        Some("connection reset")
    );
    assert!(failed_record.finished_at.is_some());
    let second = begin_request(&k, long_ttl(&ctx), "worker", 3);
    let (_, attempt) = must_start(&*ledger, &second).await;
    assert_eq!(attempt, 2);
    assert_eq!(
        finish(&*ledger, &second, succeeded(b"done")).await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    let done = record(&*ledger, &k).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(
        done.errors.len(),
        1,
        "the failed attempt's error is kept after success"
    );
}

/// The failure of the last allowed attempt makes the key `ignored`, and
/// begin then refuses it.
pub async fn ledger_attempt_limit_makes_the_key_ignored(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("hopeless");
    for attempt in 1..=2 {
        let run = begin_request(&k, long_ttl(&ctx), "worker", 2);
        let (_, started) = must_start(&*ledger, &run).await;
        assert_eq!(started, attempt);
        let expected = if attempt < 2 {
            RunStatus::Failed
        } else {
            RunStatus::Ignored
        };
        assert_eq!(
            finish(
                &*ledger,
                &run,
                failed(attempt, &format!("boom {attempt}"), true)
            )
            .await,
            FinishOutcome::Finished(expected),
            "attempt {attempt} of 2"
        );
    }
    let ignored = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), "worker", 2)).await;
    assert_eq!(ignored.status, RunStatus::Ignored);
    assert_eq!(ignored.attempts, 2);
    let messages: Vec<&str> = ignored.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, vec!["boom 1", "boom 2"]);
}

/// A fatal (non-retryable) failure makes the key `ignored` at once, however
/// many attempts are left.
pub async fn ledger_fatal_failure_ignores_the_key_at_once(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("bad-input");
    let run = begin_request(&k, long_ttl(&ctx), "worker", 10);
    must_start(&*ledger, &run).await;
    assert_eq!(
        finish(&*ledger, &run, failed(1, "malformed date", false)).await,
        FinishOutcome::Finished(RunStatus::Ignored)
    );
    let record = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), "worker", 10)).await;
    assert_eq!(record.status, RunStatus::Ignored);
    assert!(!record.last_error().expect("error kept").retryable);
}

/// A `failed` key is started only while `attempts < max_attempts` of the
/// begin that asks.
pub async fn ledger_failed_key_out_of_attempts_is_not_started(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("lowered-limit");
    let run = begin_request(&k, long_ttl(&ctx), "worker", 5);
    must_start(&*ledger, &run).await;
    finish(&*ledger, &run, failed(1, "try later", true)).await;
    let refused = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), "worker", 1)).await;
    assert_eq!(refused.status, RunStatus::Failed);
    let (_, attempt) = must_start(&*ledger, &begin_request(&k, long_ttl(&ctx), "worker", 2)).await;
    assert_eq!(attempt, 2);
}

/// A run that crashed on its last attempt is not taken over (it stays
/// visible as stuck) until an operator retries it.
pub async fn ledger_stuck_run_without_attempts_left_waits_for_an_operator(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("crash-loop");
    must_start(
        &*ledger,
        &begin_request(&k, ctx.profile().short_ttl, "oom", 1),
    )
    .await;
    ctx.sleep_past_short_ttl().await;
    let stuck = must_refuse(&*ledger, &begin_request(&k, long_ttl(&ctx), "next", 1)).await;
    assert!(stuck.is_stuck(), "{stuck:?}");
    assert_eq!(ledger.retry(&k).await.unwrap(), RetryOutcome::Requeued);
    assert_eq!(record(&*ledger, &k).await.status, RunStatus::Pending);
    let (_, attempt) = must_start(&*ledger, &begin_request(&k, long_ttl(&ctx), "next", 1)).await;
    assert_eq!(attempt, 2, "attempts keep counting across a retry");
}

/// The record keeps the errors of the last five attempts, oldest first.
pub async fn ledger_error_history_keeps_the_last_attempts(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("history");
    for attempt in 1..=7 {
        let run = begin_request(&k, long_ttl(&ctx), "worker", 100);
        let (_, started) = must_start(&*ledger, &run).await;
        assert_eq!(started, attempt);
        finish(
            &*ledger,
            &run,
            failed(attempt, &format!("error {attempt}"), true),
        )
        .await;
    }
    let record = record(&*ledger, &k).await;
    let attempts: Vec<u32> = record.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![3, 4, 5, 6, 7]);
    assert_eq!(record.last_error().unwrap().message, "error 7");
}

/// The size limits are the store's own: `finish` refuses a result over
/// 64 KiB with a typed error and changes nothing, stores a result of
/// exactly 64 KiB whole, and cuts an error message over 2 KiB even when it
/// was set through `RunError`'s public field (not `RunError::new`).
pub async fn ledger_finish_enforces_size_limits(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("sizes");
    let run = begin_request(&k, long_ttl(&ctx), "worker", 3);
    must_start(&*ledger, &run).await;
    let oversized = ledger
        .finish(&FinishRequest {
            key: k.clone(),
            lease_id: run.lease_id,
            finish: Finish::Succeeded {
                result: Some(vec![b'x'; MAX_RESULT_BYTES + 1]),
            },
        })
        .await;
    assert!(
        matches!(oversized, Err(LockError::ResultTooLarge { .. })),
        "a result over {MAX_RESULT_BYTES} bytes was not refused: {oversized:?}"
    );
    let unchanged = record(&*ledger, &k).await;
    assert_eq!(unchanged.status, RunStatus::Running, "{unchanged:?}");
    assert!(unchanged.result.is_none());

    let mut error = RunError::new(1, "", true);
    error.message = "é".repeat(MAX_ERROR_BYTES);
    assert_eq!(
        finish(&*ledger, &run, Finish::Failed { error }).await,
        FinishOutcome::Finished(RunStatus::Failed)
    );
    let failed = record(&*ledger, &k).await;
    let message = &failed.last_error().expect("the error is kept").message;
    assert!(
        message.len() <= MAX_ERROR_BYTES && message.ends_with('…'),
        "an error message of {} bytes was stored as {} bytes",
        MAX_ERROR_BYTES * 2,
        message.len()
    );

    let largest = vec![b'y'; MAX_RESULT_BYTES];
    let second = begin_request(&k, long_ttl(&ctx), "worker", 3);
    must_start(&*ledger, &second).await;
    assert_eq!(
        finish(
            &*ledger,
            &second,
            Finish::Succeeded {
                result: Some(largest.clone())
            }
        )
        .await,
        FinishOutcome::Finished(RunStatus::Succeeded)
    );
    assert_eq!(record(&*ledger, &k).await.result, Some(largest));
}

// ---------------------------------------------------------------- operator

/// Enqueue makes a `pending` record that the next begin runs, and never
/// touches an existing record.
pub async fn ledger_enqueue_creates_pending_and_never_resets(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("queued");
    assert_eq!(
        ledger.enqueue(&k, None).await.unwrap(),
        EnqueueOutcome::Created
    );
    let pending = record(&*ledger, &k).await;
    assert_eq!((pending.status, pending.attempts), (RunStatus::Pending, 0));
    assert!(pending.fence.is_none());
    assert_eq!(
        ledger.enqueue(&k, None).await.unwrap(),
        EnqueueOutcome::Exists(RunStatus::Pending)
    );
    let run = begin_request(&k, long_ttl(&ctx), "worker", 3);
    let (fence, attempt) = must_start(&*ledger, &run).await;
    assert_eq!(attempt, 1);
    assert_eq!(
        ledger.enqueue(&k, None).await.unwrap(),
        EnqueueOutcome::Exists(RunStatus::Running)
    );
    finish(&*ledger, &run, succeeded(b"r")).await;
    let before = record(&*ledger, &k).await;
    assert_eq!(
        ledger.enqueue(&k, None).await.unwrap(),
        EnqueueOutcome::Exists(RunStatus::Succeeded)
    );
    let after = record(&*ledger, &k).await;
    assert_eq!(after, before, "enqueue changed an existing record");
    assert_eq!(after.fence, Some(fence));
}

/// Retry requeues `failed`, `ignored` and stuck records, and nothing else.
pub async fn ledger_retry_requeues_only_failed_ignored_or_stuck(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    assert_eq!(
        ledger.retry(&key("absent")).await.unwrap(),
        RetryOutcome::NotFound
    );

    let done = key("done");
    let run = begin_request(&done, long_ttl(&ctx), "w", 3);
    must_start(&*ledger, &run).await;
    assert_eq!(
        ledger.retry(&done).await.unwrap(),
        RetryOutcome::Unchanged(RunStatus::Running)
    );
    finish(&*ledger, &run, succeeded(b"")).await;
    assert_eq!(
        ledger.retry(&done).await.unwrap(),
        RetryOutcome::Unchanged(RunStatus::Succeeded)
    );

    ledger.enqueue(&key("pending"), None).await.unwrap();
    assert_eq!(
        ledger.retry(&key("pending")).await.unwrap(),
        RetryOutcome::Unchanged(RunStatus::Pending)
    );

    for (name, retryable) in [("failed", true), ("ignored", false)] {
        let k = key(name);
        let run = begin_request(&k, long_ttl(&ctx), "w", 3);
        must_start(&*ledger, &run).await;
        finish(&*ledger, &run, failed(1, name, retryable)).await;
        assert_eq!(
            ledger.retry(&k).await.unwrap(),
            RetryOutcome::Requeued,
            "{name}"
        );
        let requeued = record(&*ledger, &k).await;
        assert_eq!(requeued.status, RunStatus::Pending, "{name}");
        assert_eq!(
            requeued.attempts, 1,
            "{name}: retry reset the attempt count"
        );
        assert_eq!(
            requeued.errors.len(),
            1,
            "{name}: retry dropped the error history"
        );
    }
}

/// A key begun again with a different request hash is refused: at the
/// store by not starting, in the client as `RequestMismatch`.
pub async fn ledger_request_hash_mismatch_is_refused(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("payment/77");
    let hash_a = RequestHash::new("sha256:aaaa").unwrap();
    let hash_b = RequestHash::new("sha256:bbbb").unwrap();
    let mut first = begin_request(&k, long_ttl(&ctx), "w", 5);
    first.request_hash = Some(hash_a.clone());
    must_start(&*ledger, &first).await;
    finish(&*ledger, &first, failed(1, "declined", true)).await;
    let mut other = begin_request(&k, long_ttl(&ctx), "w", 5);
    other.request_hash = Some(hash_b.clone());
    let refused = must_refuse(&*ledger, &other).await;
    assert_eq!(refused.request_hash.as_ref(), Some(&hash_a));
    assert_eq!(refused.status, RunStatus::Failed);

    let client = Ledger::from_arc(Arc::clone(&ledger));
    let options = RunOptions::new(long_ttl(&ctx)).request_hash(hash_b);
    match client.begin(&k, &options).await {
        Err(LockError::RequestMismatch { stored, given, .. }) => {
            assert_eq!(
                (stored.as_str(), given.as_str()),
                ("sha256:aaaa", "sha256:bbbb")
            );
        }
        other => panic!("expected RequestMismatch, got {other:?}"),
    }
    // The same hash, or none, still runs it.
    let mut same = begin_request(&k, long_ttl(&ctx), "w", 5);
    same.request_hash = Some(hash_a);
    let (_, attempt) = must_start(&*ledger, &same).await;
    assert_eq!(attempt, 2);
}

/// Purge deletes finished records past the retention and never touches a
/// running, pending or failed one.
pub async fn ledger_purge_removes_only_old_finished_records(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let ttl = long_ttl(&ctx);
    let ok = begin_request(&key("ok"), ttl, "w", 3);
    must_start(&*ledger, &ok).await;
    finish(&*ledger, &ok, succeeded(b"")).await;
    let bad = begin_request(&key("bad"), ttl, "w", 3);
    must_start(&*ledger, &bad).await;
    finish(&*ledger, &bad, failed(1, "fatal", false)).await;
    let flaky = begin_request(&key("flaky"), ttl, "w", 3);
    must_start(&*ledger, &flaky).await;
    finish(&*ledger, &flaky, failed(1, "again", true)).await;
    let running = begin_request(&key("running"), ttl, "w", 3);
    must_start(&*ledger, &running).await;
    let stuck = begin_request(&key("stuck"), ctx.profile().short_ttl, "w", 3);
    must_start(&*ledger, &stuck).await;
    ledger.enqueue(&key("pending"), None).await.unwrap();
    ctx.sleep_past_short_ttl().await;

    assert_eq!(
        ledger.purge(Duration::from_secs(3600)).await.unwrap(),
        0,
        "purged young records"
    );
    assert_eq!(ledger.purge(Duration::ZERO).await.unwrap(), 2);
    for gone in ["ok", "bad"] {
        assert!(
            ledger.get(&key(gone)).await.unwrap().is_none(),
            "{gone} survived purge"
        );
    }
    for kept in ["flaky", "running", "stuck", "pending"] {
        assert!(
            ledger.get(&key(kept)).await.unwrap().is_some(),
            "purge deleted {kept}"
        );
    }
    assert_eq!(
        finish(&*ledger, &running, succeeded(b"still mine")).await,
        FinishOutcome::Finished(RunStatus::Succeeded),
        "purge disturbed a running record"
    );
}

/// Fences of one key strictly increase across takeover, retry and purge.
pub async fn ledger_fences_increase_across_takeover_retry_and_purge(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("fenced");
    let mut fences = Vec::new();
    // takeover
    let crashed = begin_request(&k, ctx.profile().short_ttl, "crashed", 10);
    fences.push(must_start(&*ledger, &crashed).await.0);
    ctx.sleep_past_short_ttl().await;
    let second = begin_request(&k, long_ttl(&ctx), "w", 10);
    fences.push(must_start(&*ledger, &second).await.0);
    // failure, then retry by the operator
    finish(&*ledger, &second, failed(2, "fatal", false)).await;
    ledger.retry(&k).await.unwrap();
    let third = begin_request(&k, long_ttl(&ctx), "w", 10);
    fences.push(must_start(&*ledger, &third).await.0);
    // success, purge, and the key begun afresh
    finish(&*ledger, &third, succeeded(b"")).await;
    assert_eq!(ledger.purge(Duration::ZERO).await.unwrap(), 1);
    let fourth = begin_request(&k, long_ttl(&ctx), "w", 10);
    let (fence, attempt) = must_start(&*ledger, &fourth).await;
    fences.push(fence);
    assert_eq!(attempt, 1, "a purged key starts counting again");
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences did not strictly increase: {fences:?}"
    );
}

/// Query returns exactly the matching records, ordered by (updated_at, key)
/// either way, and paging visits each once.
pub async fn ledger_query_filters_orders_and_pages(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    // An hour, not `long_ttl`: the running records must stay live from
    // `record` below to the last page, however slow the server, or "stuck"
    // and the expectations computed before paging disagree. (25 short TTLs
    // ran out on a loaded, shared single-threaded moto.)
    let ttl = Duration::from_secs(3600);
    let mut expected_status = Vec::new();
    for i in 0..12 {
        let k = key(&format!("job-{i:02}"));
        let status = match i % 4 {
            0 => {
                ledger.enqueue(&k, None).await.unwrap();
                RunStatus::Pending
            }
            1 => {
                must_start(&*ledger, &begin_request(&k, ttl, "w", 3)).await;
                RunStatus::Running
            }
            2 => {
                let run = begin_request(&k, ttl, "w", 3);
                must_start(&*ledger, &run).await;
                finish(&*ledger, &run, succeeded(b"")).await;
                RunStatus::Succeeded
            }
            _ => {
                let run = begin_request(&k, ttl, "w", 3);
                must_start(&*ledger, &run).await;
                finish(&*ledger, &run, failed(1, "x", true)).await;
                RunStatus::Failed
            }
        };
        expected_status.push((k, status));
        // Spread the updated times over distinct milliseconds on most backends;
        // ties are broken by key and the expected order below accounts for them.
        ctx.sleep(Duration::from_millis(2)).await;
    }
    let mut all = Vec::new();
    for (k, status) in &expected_status {
        let record = record(&*ledger, k).await;
        assert_eq!(record.status, *status);
        all.push(record);
    }
    let position = |r: &RunRecord| (unix_millis(r.updated_at), r.key.as_str().to_owned());
    all.sort_by_key(position);

    let filters = [
        StatusFilter::All,
        StatusFilter::Unfinished,
        StatusFilter::Is(RunStatus::Succeeded),
        StatusFilter::Is(RunStatus::Running),
        StatusFilter::Stuck,
    ];
    for filter in filters {
        for order in [Order::OldestFirst, Order::NewestFirst] {
            let mut want: Vec<LockKey> = all
                .iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.key.clone())
                .collect();
            if order == Order::NewestFirst {
                want.reverse();
            }
            let mut got = Vec::new();
            let mut query = RunQuery::new(filter).limit(3);
            query.order = order;
            let mut pages = 0;
            loop {
                let page = ledger.query(&query).await.unwrap();
                pages += 1;
                assert!(page.records.len() <= 3, "a page is over its limit");
                assert!(
                    page.records.iter().all(|r| filter.matches(r)),
                    "{filter:?} let through a record"
                );
                got.extend(page.records.iter().map(|r| r.key.clone()));
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
                assert!(pages <= 20, "paging does not end");
            }
            assert_eq!(got, want, "query {filter:?} {order:?}");
        }
    }
}

// ---------------------------------------------------------------- waiting

/// A waiter gets the record once the run ends; where the backend announces
/// ends, the signal taken before the finish fires.
pub async fn ledger_wait_returns_when_the_run_finishes(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("awaited");
    let run = begin_request(&k, long_ttl(&ctx), "worker", 3);
    must_start(&*ledger, &run).await;
    let signal = ledger.finish_signal(&k);
    let client = Ledger::from_arc(Arc::clone(&ledger)).with_backoff(quick_backoff(&ctx));
    let waiter = tokio::spawn({
        let client = client.clone();
        let k = k.clone();
        async move { client.wait(&k, Duration::from_secs(600)).await }
    });
    ctx.sleep(ctx.profile().short_ttl / 4).await;
    assert!(
        !waiter.is_finished(),
        "the waiter returned while the run was running"
    );
    finish(&*ledger, &run, succeeded(b"out")).await;
    if let Some(signal) = signal {
        // The promise is "woken by the finish", so a generous bound only
        // catches a signal that never fires.
        tokio::time::timeout(Duration::from_secs(30), signal)
            .await
            .expect("the finish signal did not fire after the run finished");
    }
    let record = waiter.await.unwrap().expect("wait failed");
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(record.result.as_deref(), Some(&b"out"[..]));
}

/// `wait_all` returns every key's record, in the order asked, once all ended.
pub async fn ledger_wait_all_waits_for_every_key(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let keys: Vec<LockKey> = (0..3).map(|i| key(&format!("part-{i}"))).collect();
    let mut runs = Vec::new();
    for k in &keys {
        let run = begin_request(k, long_ttl(&ctx), "worker", 1);
        must_start(&*ledger, &run).await;
        runs.push(run);
    }
    let client = Ledger::from_arc(Arc::clone(&ledger)).with_backoff(quick_backoff(&ctx));
    let waiter = tokio::spawn({
        let keys = keys.clone();
        async move { client.wait_all(&keys, Duration::from_secs(600)).await }
    });
    for (i, run) in runs.iter().enumerate() {
        ctx.sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "wait_all returned before part {i} ended"
        );
        let how = if i == 1 {
            failed(1, "no", false)
        } else {
            succeeded(b"")
        };
        finish(&*ledger, run, how).await;
    }
    let records = waiter.await.unwrap().expect("wait_all failed");
    let got: Vec<(LockKey, RunStatus)> = records.into_iter().map(|r| (r.key, r.status)).collect();
    assert_eq!(
        got,
        vec![
            (keys[0].clone(), RunStatus::Succeeded),
            (keys[1].clone(), RunStatus::Ignored),
            (keys[2].clone(), RunStatus::Succeeded),
        ]
    );
}

/// A wait that runs out of time says so and names the running holder.
pub async fn ledger_wait_times_out_naming_the_holder(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let k = key("slow");
    let run = begin_request(&k, long_ttl(&ctx), "slowpoke", 3);
    let (fence, _) = must_start(&*ledger, &run).await;
    let client = Ledger::from_arc(Arc::clone(&ledger)).with_backoff(quick_backoff(&ctx));
    let wait = ctx.profile().short_ttl / 2;
    match client.wait(&k, wait).await {
        Err(LockError::Timeout { waited, holder, .. }) => {
            assert!(waited >= wait, "gave up after {waited:?}, before {wait:?}");
            let holder = holder.expect("the timeout names the holder");
            assert_eq!((holder.owner(), holder.fence()), ("slowpoke", fence));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

// ---------------------------------------------------------------- client

/// `run_once` through its outcomes: ran, replayed, failed then ran, running
/// elsewhere, ignored.
pub async fn ledger_run_once_reports_every_outcome(ctx: Ctx) {
    let ledger = ctx.ledger_client().await;
    let options = RunOptions::new(long_ttl(&ctx)).max_attempts(2);

    let ran = ledger
        .run_once("report", options.clone(), |run| async move {
            Ok::<_, RunFailure>(format!("fence {}", run.fence()))
        })
        .await
        .unwrap();
    let RunOnce::Ran {
        value,
        fence,
        attempt,
    } = ran
    else {
        panic!("a new key did not run: {ran:?}")
    };
    assert_eq!((value.clone(), attempt), (format!("fence {fence}"), 1));
    let replay = ledger
        .run_once("report", options.clone(), |_| async {
            panic!("a succeeded key ran again");
            #[allow(unreachable_code)]
            Ok::<String, RunFailure>(String::new())
        })
        .await
        .unwrap();
    let RunOnce::AlreadySucceeded {
        value: replayed,
        record,
    } = replay
    else {
        panic!("a succeeded key was not replayed: {replay:?}")
    };
    assert_eq!(replayed, value);
    assert_eq!(record.status, RunStatus::Succeeded);

    let failing = ledger
        .run_once("flaky", options.clone(), |_| async {
            Err::<u32, _>(RunFailure::retryable("disk full"))
        })
        .await
        .unwrap();
    assert!(
        matches!(
            failing,
            RunOnce::Failed {
                status: RunStatus::Failed,
                attempt: 1,
                ..
            }
        ),
        "{failing:?}"
    );
    let second = ledger
        .run_once("flaky", options.clone(), |_| async {
            Ok::<u32, RunFailure>(7)
        })
        .await
        .unwrap();
    assert!(
        matches!(
            second,
            RunOnce::Ran {
                value: 7,
                attempt: 2,
                ..
            }
        ),
        "{second:?}"
    );

    let fatal = ledger
        .run_once("broken", options.clone(), |_| async {
            Err::<u32, _>(RunFailure::fatal("bad config"))
        })
        .await
        .unwrap();
    assert!(
        matches!(
            fatal,
            RunOnce::Failed {
                status: RunStatus::Ignored,
                ..
            }
        ),
        "{fatal:?}"
    );
    let ignored = ledger
        .run_once("broken", options.clone(), |_| async {
            Ok::<u32, RunFailure>(1)
        })
        .await
        .unwrap();
    assert!(matches!(ignored, RunOnce::Ignored { .. }), "{ignored:?}");

    let Begin::Started(guard) = ledger.begin("busy", &options).await.unwrap() else {
        panic!("a new key did not start")
    };
    let elsewhere = ledger
        .run_once("busy", options.clone(), |_| async {
            Ok::<u32, RunFailure>(1)
        })
        .await
        .unwrap();
    let RunOnce::Running { record } = elsewhere else {
        panic!("a running key was not reported running: {elsewhere:?}")
    };
    assert_eq!(record.holder().expect("holder").fence(), guard.fence());
    guard.succeed_json(&5u32).await.unwrap();
}

/// `run_once` asked to wait for a run elsewhere returns that run's result.
pub async fn ledger_run_once_waits_for_a_run_elsewhere(ctx: Ctx) {
    let ledger = ctx.ledger_client().await.with_backoff(quick_backoff(&ctx));
    let options = RunOptions::new(long_ttl(&ctx));
    let Begin::Started(guard) = ledger.begin("shared", &options).await.unwrap() else {
        panic!("a new key did not start")
    };
    let waiting = tokio::spawn({
        let ledger = ledger.clone();
        let options = options.clone().wait_for_running(Duration::from_secs(600));
        async move {
            ledger
                .run_once("shared", options, |_| async { Ok::<u32, RunFailure>(0) })
                .await
        }
    });
    ctx.sleep(ctx.profile().short_ttl / 4).await;
    assert!(!waiting.is_finished(), "the second caller did not wait");
    guard.succeed_json(&99u32).await.unwrap();
    let outcome = waiting.await.unwrap().unwrap();
    assert!(
        matches!(outcome, RunOnce::AlreadySucceeded { value: 99, .. }),
        "{outcome:?}"
    );
}

/// `run_once` waiting for a run elsewhere takes over a run whose worker
/// crashed once its lease expires (within about one TTL), instead of
/// waiting out its whole wait.
pub async fn ledger_run_once_waiting_takes_over_a_crashed_run(ctx: Ctx) {
    let store = ctx.ledger().await;
    let k = key("crashed-while-waited-for");
    let crashed = begin_request(&k, ctx.profile().short_ttl, "crashed", 3);
    let (old_fence, _) = must_start(&*store, &crashed).await;
    let ledger = Ledger::from_arc(Arc::clone(&store)).with_backoff(quick_backoff(&ctx));
    let options = RunOptions::new(long_ttl(&ctx)).wait_for_running(Duration::from_secs(3600));
    // Only detects a wait for the whole hour: a takeover comes one short
    // TTL (plus the backend's allowance) after the crash.
    let outcome = tokio::time::timeout(
        Duration::from_secs(300),
        ledger.run_once(&k, options, |run| async move {
            Ok::<u64, RunFailure>(run.fence().get())
        }),
    )
    .await
    .expect("run_once kept waiting for a crashed run instead of taking it over")
    .unwrap();
    let RunOnce::Ran {
        value,
        fence,
        attempt,
    } = outcome
    else {
        panic!("the crashed run was not taken over: {outcome:?}")
    };
    assert_eq!(attempt, 2, "the crashed run counts as an attempt");
    assert!(
        fence > old_fence,
        "takeover fence {fence} not above {old_fence}"
    );
    assert_eq!(value, fence.get());
    assert_eq!(record(&*store, &k).await.status, RunStatus::Succeeded);
}

/// A run guard dropped without finishing records the attempt as failed
/// (retryable, "abandoned"), so the next begin need not wait for the lease.
pub async fn ledger_dropped_run_records_an_abandoned_attempt(ctx: Ctx) {
    let ledger = ctx.ledger_client().await.with_backoff(quick_backoff(&ctx));
    let options = RunOptions::new(long_ttl(&ctx));
    let Begin::Started(guard) = ledger.begin("dropped", &options).await.unwrap() else {
        panic!("a new key did not start")
    };
    drop(guard);
    // The guard records the abandon in the background; wait for it (a
    // generous bound, since the promise is that it happens at all).
    let record = ledger
        .wait("dropped", Duration::from_secs(60))
        .await
        .expect("the abandoned run still looks running");
    assert_eq!(record.status, RunStatus::Failed);
    assert!(
        record
            .last_error()
            .expect("an error")
            .message
            .contains("abandoned"),
        "{record:?}"
    );
    assert!(matches!(
        ledger.begin("dropped", &options).await.unwrap(),
        Begin::Started(_)
    ));
}

/// The idempotent consumer over an at-least-once batch: the first delivery
/// runs each message, reports the failed one for redelivery; the
/// redelivered batch replays the success, runs the failed message again,
/// leaves the fatal one alone, and a copy in progress elsewhere comes back.
pub async fn ledger_consumer_runs_a_redelivered_batch_once(ctx: Ctx) {
    let ledger = ctx.ledger_client().await;
    let consumer = IdempotentConsumer::new(ledger.clone(), long_ttl(&ctx)).unwrap();
    let runs = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handler = |body: &'static str, _lease| {
        let runs = Arc::clone(&runs);
        async move {
            runs.lock().unwrap().push(body.to_owned());
            match body {
                "flaky"
                    if runs
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|b| *b == "flaky")
                        .count()
                        == 1 =>
                {
                    Err(RunFailure::retryable("throttled"))
                }
                "poison" => Err(RunFailure::fatal("cannot parse")),
                _ => Ok(format!("done {body}")),
            }
        }
    };
    let batch = || {
        vec![
            Message::new("m-1", "ok"),
            Message::new("m-2", "flaky"),
            Message::new("m-3", "poison"),
            Message::new("m-4", "order")
                .with_key("order/77")
                .with_request_hash(RequestHash::new("h1").unwrap()),
        ]
    };
    let first = consumer.process(batch(), handler).await.unwrap();
    assert_eq!(first.batch_item_failures(), vec!["m-2"], "{first:?}");
    assert_eq!(
        first.sqs_response(),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]})
    );
    assert!(matches!(&first.items[2].1, Processed::GaveUp(f) if !f.is_retryable()));

    let again = consumer.process(batch(), handler).await.unwrap();
    assert!(again.batch_item_failures().is_empty(), "{again:?}");
    assert!(
        matches!(&again.items[0].1, Processed::Replayed(v) if v == "done ok"),
        "{again:?}"
    );
    assert!(
        matches!(&again.items[1].1, Processed::Ran(v) if v == "done flaky"),
        "{again:?}"
    );
    assert!(
        matches!(&again.items[2].1, Processed::Ignored(_)),
        "{again:?}"
    );
    assert!(
        matches!(&again.items[3].1, Processed::Replayed(_)),
        "{again:?}"
    );
    assert_eq!(
        runs.lock().unwrap().clone(),
        vec!["ok", "flaky", "poison", "order", "flaky"],
        "a message ran more often than it had to"
    );

    // The same payload key with another hash is refused, not replayed.
    let other = Message::new("m-5", "order")
        .with_key("order/77")
        .with_request_hash(RequestHash::new("h2").unwrap());
    let rejected = consumer.process(vec![other], handler).await.unwrap();
    assert!(
        matches!(
            &rejected.items[0].1,
            Processed::Rejected(LockError::RequestMismatch { .. })
        ),
        "{rejected:?}"
    );
    assert!(rejected.batch_item_failures().is_empty());

    // A duplicate of a message running elsewhere comes back later.
    let Begin::Started(first_copy) = ledger
        .begin("msg/m-6", &RunOptions::new(long_ttl(&ctx)))
        .await
        .unwrap()
    else {
        panic!("a new key did not start")
    };
    let dup = consumer
        .process(vec![Message::new("m-6", "ok")], handler)
        .await
        .unwrap();
    assert!(
        matches!(&dup.items[0].1, Processed::InProgress(_)),
        "{dup:?}"
    );
    assert_eq!(dup.batch_item_failures(), vec!["m-6"]);
    first_copy.succeed_json(&"first copy").await.unwrap();
    let replayed = consumer
        .process(vec![Message::new("m-6", "ok")], handler)
        .await
        .unwrap();
    assert!(
        matches!(&replayed.items[0].1, Processed::Replayed(v) if v == "first copy"),
        "{replayed:?}"
    );
}

/// Bad input is a typed error before any request is sent.
pub async fn ledger_invalid_input_is_rejected_before_any_request(ctx: Ctx) {
    let counting = Arc::new(CountingLedger {
        inner: ctx.ledger().await,
        calls: Default::default(),
        finishes: Default::default(),
    });
    let ledger = Ledger::from_arc(Arc::clone(&counting) as Arc<dyn LedgerStore>);
    let ttl = long_ttl(&ctx);
    let cases: Vec<(&str, LockError)> = vec![
        (
            "zero attempts",
            ledger
                .begin("k", &RunOptions::new(ttl).max_attempts(0))
                .await
                .unwrap_err(),
        ),
        (
            "too many attempts",
            ledger
                .begin("k", &RunOptions::new(ttl).max_attempts(1001))
                .await
                .unwrap_err(),
        ),
        (
            "zero TTL",
            ledger
                .begin("k", &RunOptions::new(Duration::ZERO))
                .await
                .unwrap_err(),
        ),
        (
            "empty key",
            ledger.begin("", &RunOptions::new(ttl)).await.unwrap_err(),
        ),
        ("NUL key", ledger.get("a\0b").await.unwrap_err()),
        (
            "query limit 0",
            ledger
                .query(&RunQuery::new(StatusFilter::All).limit(0))
                .await
                .unwrap_err(),
        ),
        (
            "query limit 1001",
            ledger
                .query(&RunQuery::new(StatusFilter::All).limit(1001))
                .await
                .unwrap_err(),
        ),
        (
            "endless retention",
            ledger.purge(Duration::MAX).await.unwrap_err(),
        ),
    ];
    for (what, err) in &cases {
        assert!(
            matches!(
                err,
                LockError::InvalidArgument { .. }
                    | LockError::InvalidTtl { .. }
                    | LockError::InvalidKey { .. }
            ),
            "{what}: {err}"
        );
    }
    assert!(RequestHash::new("").is_err() && "done".parse::<RunStatus>().is_err());
    assert_eq!(
        counting.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "invalid input reached the backend"
    );
    // Too large a result is refused before the finish is sent.
    let Begin::Started(guard) = ledger.begin("big", &RunOptions::new(ttl)).await.unwrap() else {
        panic!("a new key did not start")
    };
    let before = counting.calls.load(std::sync::atomic::Ordering::SeqCst);
    let big = vec![0u8; lockstore_api::ledger::MAX_RESULT_BYTES + 1];
    let err = guard.succeed(Some(big)).await.unwrap_err();
    assert!(matches!(err, LockError::ResultTooLarge { .. }), "{err}");
    let finishes = counting.finishes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        finishes, 0,
        "an oversized result was sent ({before} calls before)"
    );
}

/// Records of one namespace are invisible to another.
pub async fn ledger_namespaces_are_independent(ctx: Ctx) {
    let here = ctx.ledger().await;
    let there = ctx.other_ledger().await;
    let k = key("tenant-job");
    let run = begin_request(&k, long_ttl(&ctx), "here", 3);
    must_start(&*here, &run).await;
    finish(&*here, &run, succeeded(b"")).await;
    assert!(
        there.get(&k).await.unwrap().is_none(),
        "a record leaked across namespaces"
    );
    must_start(&*there, &begin_request(&k, long_ttl(&ctx), "there", 3)).await;
    assert_eq!(record(&*here, &k).await.status, RunStatus::Succeeded);
}

/// A run and a lock of the same key do not block each other.
pub async fn ledger_records_are_apart_from_locks(ctx: Ctx) {
    let ledger = ctx.ledger().await;
    let locks = LockClient::from_arc(ctx.store().await);
    let guard = locks
        .acquire("shared-name", AcquireOptions::new(long_ttl(&ctx)))
        .await
        .unwrap();
    let k = key("shared-name");
    let run = begin_request(&k, long_ttl(&ctx), "w", 3);
    must_start(&*ledger, &run).await;
    finish(&*ledger, &run, succeeded(b"")).await;
    assert!(
        locks.inspect("shared-name").await.unwrap().is_some(),
        "a run ended a lock"
    );
    guard.release().await.unwrap();
}

/// Counts the requests a ledger store receives.
#[derive(Debug)]
struct CountingLedger {
    inner: Arc<dyn LedgerStore>,
    calls: std::sync::atomic::AtomicU64,
    finishes: std::sync::atomic::AtomicU64,
}

impl CountingLedger {
    fn count(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl LedgerStore for CountingLedger {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        self.count();
        self.inner.begin(request).await
    }
    async fn renew_run(
        &self,
        key: &LockKey,
        id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        self.count();
        self.inner.renew_run(key, id, ttl).await
    }
    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        self.count();
        if matches!(request.finish, Finish::Succeeded { .. }) {
            self.finishes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.finish(request).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError> {
        self.count();
        self.inner.get(key).await
    }
    async fn enqueue(
        &self,
        key: &LockKey,
        hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        self.count();
        self.inner.enqueue(key, hash).await
    }
    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        self.count();
        self.inner.retry(key).await
    }
    async fn query(&self, query: &RunQuery) -> Result<lockstore_api::ledger::RunPage, LockError> {
        self.count();
        self.inner.query(query).await
    }
    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        self.count();
        self.inner.purge(older_than).await
    }
}
