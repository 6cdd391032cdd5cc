//! Leader election ([`LockClient::election`]): one leader at a time with
//! rising terms, the published value, resignation and hand-over, a leader
//! process killed or paused, and the observer's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockstore_api::election::{Election, Leader, Observer};
use lockstore_api::{Backoff, CancellationToken, LockClient, LockError, LockStore, OwnerLabel};
use tokio::time::timeout;

use super::{HANG, key, long_ttl};
use crate::child::{self, next_command, report};
use crate::fault::PartitionableStore;
use crate::{Ctx, Processes};

fn candidate_on(store: Arc<dyn LockStore>, name: &str) -> LockClient {
    LockClient::from_arc(store).with_owner(OwnerLabel::new(name).unwrap())
}

async fn candidate(ctx: &Ctx, name: &str, election: &str, ttl: Duration) -> Election {
    candidate_on(ctx.store().await, name)
        .election(election, ttl)
        .unwrap()
}

/// A backoff that keeps polling backends quick in a case.
fn quick(ctx: &Ctx) -> Backoff {
    Backoff::new(Duration::from_millis(1), ctx.profile().short_ttl / 4)
}

/// Four candidates campaign for one name three times each: never two
/// leaders at once, and each term is larger than every term before it.
pub async fn election_has_one_leader_at_a_time_with_rising_terms(ctx: Ctx) {
    let leading = Arc::new(AtomicU32::new(0));
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut candidates = Vec::new();
    for n in 0..4 {
        let election = candidate(
            &ctx,
            &format!("candidate-{n}"),
            "one-leader",
            long_ttl(&ctx),
        )
        .await
        .backoff(quick(&ctx));
        let (ctx, leading, terms) = (ctx.clone(), Arc::clone(&leading), Arc::clone(&terms));
        candidates.push(tokio::spawn(async move {
            for round in 0..3 {
                let leadership = election.campaign(format!("round {round}")).await.unwrap();
                let before = leading.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    before,
                    0,
                    "{} was elected while another candidate led",
                    election.candidate()
                );
                // Granted after the previous leader resigned: pushed in the
                // order of the grants.
                terms.lock().unwrap().push(leadership.term());
                ctx.sleep(ctx.profile().short_ttl / 20).await;
                leading.fetch_sub(1, Ordering::SeqCst);
                leadership.resign().await.unwrap();
            }
        }));
    }
    for candidate in candidates {
        timeout(HANG * 4, candidate)
            .await
            .expect("twelve terms of four candidates did not end")
            .unwrap();
    }
    let terms = terms.lock().unwrap();
    assert_eq!(terms.len(), 12);
    assert!(
        terms.windows(2).all(|pair| pair[0] < pair[1]),
        "terms did not strictly increase in the order they were granted: {terms:?}"
    );
}

/// `leader` reports nobody, then the leader's candidate label, value and
/// term; `proclaim` changes the value and keeps the term; after `resign`
/// nobody leads, and the next leader's term is larger.
pub async fn election_publishes_and_proclaims_the_leaders_value(ctx: Ctx) {
    let a = candidate(&ctx, "candidate-a", "published", long_ttl(&ctx)).await;
    let b = candidate(&ctx, "candidate-b", "published", long_ttl(&ctx)).await;
    assert_eq!(
        b.leader().await.unwrap(),
        None,
        "a fresh election has a leader"
    );

    let mut leadership = a.campaign("10.0.0.1:8080").await.unwrap();
    let term = leadership.term();
    let seen = b
        .leader()
        .await
        .unwrap()
        .expect("nobody leads after a won campaign");
    assert_eq!(
        (seen.candidate(), seen.value(), seen.term()),
        ("candidate-a", "10.0.0.1:8080", term)
    );
    // Up to the TTL, plus the tolerance: a wall-clock DynamoDB store
    // reports the time until *it* could take over, skew allowance included
    // (failed once on dynalite on a loaded machine without it).
    assert!(
        seen.expires_in() > Duration::ZERO
            && seen.expires_in() <= long_ttl(&ctx) + ctx.profile().tolerance,
        "{seen:?}"
    );

    leadership.proclaim("10.0.0.2:8080 (v2) ✓").await.unwrap();
    assert_eq!(leadership.value(), "10.0.0.2:8080 (v2) ✓");
    let seen = b.leader().await.unwrap().unwrap();
    assert_eq!(
        (seen.candidate(), seen.value(), seen.term()),
        ("candidate-a", "10.0.0.2:8080 (v2) ✓", term),
        "a proclamation did not publish its value under the same term"
    );
    // Too long to publish: refused before any request, the value unchanged.
    let err = leadership.proclaim("x".repeat(300)).await.unwrap_err();
    assert!(
        matches!(err, LockError::InvalidArgument { name: "value", .. }),
        "{err:?}"
    );
    assert_eq!(
        b.leader().await.unwrap().unwrap().value(),
        "10.0.0.2:8080 (v2) ✓"
    );

    leadership.resign().await.unwrap();
    assert_eq!(
        b.leader().await.unwrap(),
        None,
        "a resigned leader still leads"
    );
    let next = b.campaign("10.0.0.3:8080").await.unwrap();
    assert!(next.term() > term, "term {} after {term}", next.term());
    next.resign().await.unwrap();
}

/// A resigned leader is replaced by the waiting candidate, not after its
/// TTL: the leader's term lasts an hour. Where the backend notifies
/// releases, the waiter backs off for up to an hour too, so only the
/// notification can wake it in time (the lock's own hand-off case checks
/// the signal itself); elsewhere it polls.
pub async fn election_resignation_hands_over_to_a_waiting_candidate(ctx: Ctx) {
    let hour = Duration::from_secs(3600);
    let backoff = if ctx.profile().release_notifications {
        Backoff::new(hour, hour)
    } else {
        quick(&ctx)
    };
    let a = candidate(&ctx, "candidate-a", "hand-over", hour).await;
    let b = candidate(&ctx, "candidate-b", "hand-over", hour)
        .await
        .backoff(backoff);
    let leadership = a.campaign("a").await.unwrap();
    let term = leadership.term();
    let waiting = tokio::spawn(async move { b.campaign("b").await });
    // Let the waiter be refused and settle into waiting.
    ctx.sleep(ctx.profile().short_ttl / 2).await;
    assert!(
        !waiting.is_finished(),
        "a second candidate was elected beside the leader"
    );
    leadership.resign().await.unwrap();
    let next = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting candidate was not elected within 10 s of the leader's resignation")
        .unwrap()
        .unwrap();
    assert!(next.term() > term);
    assert_eq!(next.candidate(), "candidate-b");
    next.resign().await.unwrap();
}

/// A leader paused past its term (its renewals cut off, its thread
/// stalled) is deposed: another candidate is elected with a larger term,
/// and the paused leader reports the loss as soon as it looks, refuses to
/// proclaim, and its term fails the fence check.
pub async fn election_paused_leader_is_deposed_and_knows_it(ctx: Ctx) {
    let short = ctx.profile().short_ttl;
    let partitioned = Arc::new(PartitionableStore::new(ctx.store().await));
    let a = LockClient::from_arc(Arc::clone(&partitioned))
        .with_owner(OwnerLabel::new("candidate-a").unwrap())
        .election("paused", short)
        .unwrap();
    let store = ctx.store().await;
    let b = candidate_on(Arc::clone(&store), "candidate-b")
        .election("paused", long_ttl(&ctx))
        .unwrap()
        .backoff(quick(&ctx));
    let mut leadership = a.campaign("a").await.unwrap();
    let term = leadership.term();
    ctx.watch_lease(&*store, &key("paused")).await;
    // No renewal can confirm, even if another worker runs the guard's task.
    partitioned.cut();
    ctx.stall(short + ctx.profile().tolerance);
    assert!(
        leadership.is_lost(),
        "a leader paused past its term still trusts it"
    );
    assert!(leadership.check().is_err());
    let next = timeout(HANG, b.campaign("b"))
        .await
        .expect("no candidate was elected after the leader's term ran out")
        .unwrap();
    assert!(next.term() > term);
    let err = leadership.proclaim("still me").await.unwrap_err();
    assert!(matches!(err, LockError::LeaseLost { .. }), "{err:?}");
    let seen = b.leader().await.unwrap().unwrap();
    assert_eq!(
        (seen.candidate(), seen.term()),
        ("candidate-b", next.term())
    );
    next.resign().await.unwrap();
}

/// A leader **process** killed with `SIGKILL` (no resignation, no more
/// renewals) is replaced by a candidate in another process within its TTL,
/// with a larger term.
pub async fn election_killed_leader_process_is_replaced(ctx: Ctx) {
    let short = ctx.profile().short_ttl;
    if ctx.is_child() {
        let election = candidate(&ctx, "child-leader", "killed", short).await;
        let leadership = election.campaign("child").await.unwrap();
        report(&format!("leading {}", leadership.term()));
        // Lead until killed.
        let _ = next_command().await;
        return;
    }
    let backend = ctx.store().await.backend_name();
    if ctx.profile().processes == Processes::OneProcess {
        assert_eq!(
            backend, "memory",
            "only the memory backend keeps its locks inside one process"
        );
        return;
    }
    let mut child = child::spawn(&ctx, &[]);
    let child_term: u64 = child.expect("leading").await.parse().unwrap();
    let b = candidate(&ctx, "candidate-b", "killed", short)
        .await
        .backoff(quick(&ctx));
    // Unless its lease already ran out (a busy machine may delay a renewal
    // past a short TTL), the child is the leader.
    if let Some(seen) = b.leader().await.unwrap() {
        assert_eq!(
            (seen.candidate(), seen.term().get()),
            ("child-leader", child_term)
        );
    }
    drop(child); // SIGKILL
    let next = timeout(HANG, b.campaign("b"))
        .await
        .expect("no candidate was elected after the leader's process was killed")
        .unwrap();
    assert!(next.term().get() > child_term);
    next.resign().await.unwrap();
}

/// An observer reports the current state first, then every change the case
/// waits for — a leader, a new value, nobody, the next leader — in order,
/// with terms that never go back.
pub async fn election_observer_sees_each_change_in_order(ctx: Ctx) {
    let a = candidate(&ctx, "candidate-a", "observed", long_ttl(&ctx)).await;
    let b = candidate(&ctx, "candidate-b", "observed", long_ttl(&ctx)).await;
    let mut observer = b
        .clone()
        .observe_every(ctx.profile().short_ttl / 8)
        .observe();
    assert_eq!(
        next(&mut observer).await,
        None,
        "the first report is not the current state"
    );

    let mut leadership = a.campaign("a1").await.unwrap();
    let first = next(&mut observer)
        .await
        .expect("the observer missed the first leader");
    assert_eq!(
        (first.candidate(), first.value(), first.term()),
        ("candidate-a", "a1", leadership.term())
    );
    leadership.proclaim("a2").await.unwrap();
    let proclaimed = next(&mut observer)
        .await
        .expect("the observer reported nobody after a proclamation");
    assert_eq!(
        (proclaimed.value(), proclaimed.term()),
        ("a2", first.term())
    );
    leadership.resign().await.unwrap();
    assert_eq!(
        next(&mut observer).await,
        None,
        "the observer missed the resignation"
    );

    let leadership = b.campaign("b1").await.unwrap();
    let second = next(&mut observer)
        .await
        .expect("the observer missed the second leader");
    assert_eq!((second.candidate(), second.value()), ("candidate-b", "b1"));
    assert!(
        second.term() > first.term(),
        "term {} reported after {}",
        second.term(),
        first.term()
    );
    leadership.resign().await.unwrap();
    assert_eq!(next(&mut observer).await, None);
}

async fn next(observer: &mut Observer) -> Option<Leader> {
    timeout(HANG, observer.changed())
        .await
        .expect("the observer saw no change")
        .unwrap()
}

/// `lead` runs the work as leader and campaigns again after a loss (the
/// work gets the new term); cancelling resigns at once, so nobody leads
/// when it returns.
pub async fn election_lead_campaigns_again_after_a_loss_and_resigns_on_cancel(ctx: Ctx) {
    let short = ctx.profile().short_ttl;
    let partitioned = Arc::new(PartitionableStore::new(ctx.store().await));
    let election = LockClient::from_arc(Arc::clone(&partitioned))
        .with_owner(OwnerLabel::new("candidate-a").unwrap())
        .election("lead", short)
        .unwrap()
        .backoff(quick(&ctx));
    let observer = candidate(&ctx, "observer", "lead", short).await;
    let cancel = CancellationToken::new();
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let leading = {
        let (cancel, terms) = (cancel.clone(), Arc::clone(&terms));
        tokio::spawn(async move {
            election
                .lead("worker", cancel, |term| {
                    terms.lock().unwrap().push(term);
                    std::future::pending::<()>()
                })
                .await
        })
    };
    let term_number = |n: usize| {
        let terms = Arc::clone(&terms);
        let ctx = ctx.clone();
        async move {
            let give_up = tokio::time::Instant::now() + HANG;
            loop {
                if let Some(term) = terms.lock().unwrap().get(n) {
                    return term.clone();
                }
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "lead never began term number {n}"
                );
                ctx.sleep(short / 8).await;
            }
        }
    };
    let first = term_number(0).await;
    // Cut the leader off: its term ends by its deadline.
    partitioned.cut();
    timeout(HANG, first.lost())
        .await
        .expect("a cut-off leader never saw its loss");
    partitioned.heal();
    let second = term_number(1).await;
    assert!(
        second.fence() > first.fence(),
        "term {} after {}",
        second.fence(),
        first.fence()
    );
    cancel.cancel();
    let ended = timeout(HANG, leading)
        .await
        .expect("lead did not end on cancel")
        .unwrap();
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    assert_eq!(
        observer.leader().await.unwrap(),
        None,
        "a cancelled lead did not resign"
    );
}
