//! The model-based test: random sequences of operations by several clients on
//! a few keys, with time passing, checked step by step against a reference
//! model of the contract.
//!
//! Real-clock backends cannot be told the exact instant a request was judged,
//! only that it lies between sending and receiving. The model therefore keeps
//! both ends of every lease's expiry and calls an outcome *certain* only
//! outside `[earliest expiry − tolerance, latest expiry + tolerance]`; inside
//! that window either answer is accepted and the model follows the backend.
//! On a paused tokio clock the window has no width and every outcome is
//! checked exactly.
//!
//! A store that takes a lease over only after watching it for a full TTL
//! ([`Profile::takeover_needs_watching`](crate::Profile)) may refuse an
//! expired lease until one TTL after the reply that first showed it that
//! lease's current version; the model records that reply for each lease.
//!
//! Sequences come from a `proptest` strategy and failures shrink to a minimal
//! sequence; the runner is driven by hand because the steps are async.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, LeaseId, LockKey, OwnerLabel, ReleaseOutcome,
    RenewOutcome, Ttl,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tokio::time::Instant;

use crate::{Clock, Ctx};

const CLIENTS: u8 = 3;
const KEYS: u8 = 2;

/// One step of a sequence. Times are in units of a quarter of `short_ttl`.
#[derive(Clone, Debug)]
enum Op {
    Acquire { client: u8, key: u8, ttl: u8 },
    Renew { client: u8, key: u8, ttl: u8 },
    Release { client: u8, key: u8 },
    ForgedRelease { key: u8 },
    Inspect { key: u8 },
    Sleep { units: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    let key = 0..KEYS;
    prop_oneof![
        4 => (client.clone(), key.clone(), 2..=8u8).prop_map(|(client, key, ttl)| Op::Acquire { client, key, ttl }),
        2 => (client.clone(), key.clone(), 2..=8u8).prop_map(|(client, key, ttl)| Op::Renew { client, key, ttl }),
        3 => (client, key.clone()).prop_map(|(client, key)| Op::Release { client, key }),
        1 => key.clone().prop_map(|key| Op::ForgedRelease { key }),
        1 => key.prop_map(|key| Op::Inspect { key }),
        3 => (1..=6u8).prop_map(|units| Op::Sleep { units }),
    ]
}

/// A lease the model believes in, with the window its expiry lies in.
#[derive(Clone, Debug)]
struct ModelLease {
    client: u8,
    id: LeaseId,
    fence: FencingToken,
    /// Sent time + TTL: the backend expired it no earlier than this.
    earliest_expiry: Instant,
    /// Reply time + TTL: the backend expired it no later than this.
    latest_expiry: Instant,
    /// The TTL of the last grant or renewal.
    ttl: Duration,
    /// Reply time of the first refused acquire or inspect that showed this
    /// version of the lease (reset by a renewal).
    first_sighting: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    Live,
    Expired,
    Unsure,
}

struct Model {
    tolerance: Duration,
    takeover_needs_watching: bool,
    leases: HashMap<u8, ModelLease>,
    last_fence: HashMap<u8, FencingToken>,
    /// The latest lease id each client got for each key, live or not.
    remembered: HashMap<(u8, u8), LeaseId>,
}

impl Model {
    /// Whether `lease` was live when the backend judged a request sent at
    /// `sent` and answered by `received`.
    fn liveness(&self, lease: &ModelLease, sent: Instant, received: Instant) -> Liveness {
        if received + self.tolerance < lease.earliest_expiry {
            Liveness::Live
        } else if sent >= lease.latest_expiry + self.tolerance {
            Liveness::Expired
        } else {
            Liveness::Unsure
        }
    }

    fn key_state(
        &self,
        key: u8,
        sent: Instant,
        received: Instant,
    ) -> (Option<&ModelLease>, Liveness) {
        match self.leases.get(&key) {
            None => (None, Liveness::Expired),
            Some(lease) => (Some(lease), self.liveness(lease, sent, received)),
        }
    }

    /// [`key_state`](Self::key_state) for a request that another client's
    /// lease may refuse (an acquire or an inspect): with
    /// `takeover_needs_watching`, an expired lease is certainly free only a
    /// TTL after the store first saw its current version.
    fn takeover_state(
        &self,
        key: u8,
        sent: Instant,
        received: Instant,
    ) -> (Option<&ModelLease>, Liveness) {
        let (lease, liveness) = self.key_state(key, sent, received);
        match lease {
            Some(l) if self.takeover_needs_watching && liveness == Liveness::Expired => {
                let watched_long_enough = l
                    .first_sighting
                    .is_some_and(|seen| sent >= seen + l.ttl + self.tolerance);
                let liveness = if watched_long_enough {
                    Liveness::Expired
                } else {
                    Liveness::Unsure
                };
                (lease, liveness)
            }
            _ => (lease, liveness),
        }
    }

    /// Notes that a reply at `received` showed `key`'s current lease.
    fn sighted(&mut self, key: u8, received: Instant) {
        if let Some(lease) = self.leases.get_mut(&key) {
            lease.first_sighting.get_or_insert(received);
        }
    }
}

struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($msg)+)));
        }
    };
}

async fn run_sequence(ctx: &Ctx, ops: &[Op]) -> Result<(), Failure> {
    let store = ctx.other_namespace().await;
    let unit = ctx.profile().short_ttl / 4;
    let keys: Vec<LockKey> = (0..KEYS)
        .map(|k| LockKey::new(format!("model-{k}")).expect("valid"))
        .collect();
    let owners: Vec<OwnerLabel> = (0..CLIENTS)
        .map(|c| OwnerLabel::new(format!("client-{c}")).expect("valid"))
        .collect();
    let mut model = Model {
        tolerance: match ctx.profile().clock {
            Clock::Tokio => Duration::ZERO,
            Clock::Real => ctx.profile().tolerance,
        },
        takeover_needs_watching: ctx.profile().takeover_needs_watching,
        leases: HashMap::new(),
        last_fence: HashMap::new(),
        remembered: HashMap::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} ({op:?})");
        match *op {
            Op::Sleep { units } => ctx.sleep(unit * u32::from(units)).await,
            Op::Acquire { client, key, ttl } => {
                let ttl = Ttl::new(unit * u32::from(ttl)).expect("valid");
                let request = AcquireRequest {
                    key: keys[usize::from(key)].clone(),
                    lease_id: LeaseId::random(),
                    ttl,
                    owner: owners[usize::from(client)].clone(),
                };
                let sent = Instant::now();
                let outcome = store.try_acquire(&request).await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| Failure(format!("{at}: {e}")))?;
                let (current, liveness) = model.takeover_state(key, sent, received);
                match outcome {
                    AcquireOutcome::Acquired { fence } => {
                        check!(
                            liveness != Liveness::Live,
                            "{at}: acquired a key the model says is held by {current:?}"
                        );
                        if let Some(last) = model.last_fence.get(&key) {
                            check!(
                                fence > *last,
                                "{at}: fence {fence} not above the previous {last}"
                            );
                        }
                        model.last_fence.insert(key, fence);
                        model.remembered.insert((client, key), request.lease_id);
                        model.leases.insert(
                            key,
                            ModelLease {
                                client,
                                id: request.lease_id,
                                fence,
                                earliest_expiry: sent + ttl.as_duration(),
                                latest_expiry: received + ttl.as_duration(),
                                ttl: ttl.as_duration(),
                                first_sighting: None,
                            },
                        );
                    }
                    AcquireOutcome::Held(holder) => {
                        check!(
                            liveness != Liveness::Expired,
                            "{at}: refused a free key, holder reported {holder:?}"
                        );
                        let current = current.expect("not expired means a lease exists");
                        check!(
                            holder.fence() == current.fence,
                            "{at}: holder fence {} but the model's lease has {}",
                            holder.fence(),
                            current.fence
                        );
                        check!(
                            holder.owner() == owners[usize::from(current.client)].as_str(),
                            "{at}: holder {:?} is not client {}",
                            holder.owner(),
                            current.client
                        );
                        model.sighted(key, received);
                    }
                }
            }
            Op::Renew { client, key, ttl } => {
                let ttl = Ttl::new(unit * u32::from(ttl)).expect("valid");
                let id = *model
                    .remembered
                    .entry((client, key))
                    .or_insert_with(LeaseId::random);
                let sent = Instant::now();
                let outcome = store.renew(&keys[usize::from(key)], id, ttl).await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| Failure(format!("{at}: {e}")))?;
                let (current, liveness) = model.key_state(key, sent, received);
                let is_current = current.is_some_and(|lease| lease.id == id);
                match outcome {
                    RenewOutcome::Renewed => {
                        check!(
                            is_current && liveness != Liveness::Expired,
                            "{at}: renewed a lease the model says is gone"
                        );
                        let lease = model.leases.get_mut(&key).expect("current");
                        lease.earliest_expiry = sent + ttl.as_duration();
                        lease.latest_expiry = received + ttl.as_duration();
                        lease.ttl = ttl.as_duration();
                        lease.first_sighting = None;
                    }
                    RenewOutcome::Lost => {
                        check!(
                            !(is_current && liveness == Liveness::Live),
                            "{at}: renewal of the live lease said lost"
                        );
                        if is_current {
                            // The backend judged it expired inside the window.
                            if model.takeover_needs_watching {
                                // Still on the key until someone watched it
                                // for a TTL, but never live again.
                                let lease = model.leases.get_mut(&key).expect("current");
                                lease.earliest_expiry = lease.earliest_expiry.min(sent);
                                lease.latest_expiry = lease.latest_expiry.min(received);
                            } else {
                                model.leases.remove(&key);
                            }
                        }
                    }
                }
            }
            Op::Release { client, key } => {
                let id = *model
                    .remembered
                    .entry((client, key))
                    .or_insert_with(LeaseId::random);
                let sent = Instant::now();
                let outcome = store.release(&keys[usize::from(key)], id).await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| Failure(format!("{at}: {e}")))?;
                let (current, liveness) = model.key_state(key, sent, received);
                let is_current = current.is_some_and(|lease| lease.id == id);
                match outcome {
                    ReleaseOutcome::Released => {
                        check!(
                            is_current && liveness != Liveness::Expired,
                            "{at}: released a lease the model says is gone"
                        );
                    }
                    ReleaseOutcome::NotHeld => {
                        check!(
                            !(is_current && liveness == Liveness::Live),
                            "{at}: release of the live lease said not held"
                        );
                    }
                }
                if is_current {
                    model.leases.remove(&key);
                }
            }
            Op::ForgedRelease { key } => {
                let outcome = store
                    .release(&keys[usize::from(key)], LeaseId::random())
                    .await
                    .map_err(|e| Failure(format!("{at}: {e}")))?;
                check!(
                    outcome == ReleaseOutcome::NotHeld,
                    "{at}: a forged lease id released a key"
                );
            }
            Op::Inspect { key } => {
                let sent = Instant::now();
                let outcome = store.inspect(&keys[usize::from(key)]).await;
                let received = Instant::now();
                let outcome = outcome.map_err(|e| Failure(format!("{at}: {e}")))?;
                let (current, liveness) = model.takeover_state(key, sent, received);
                match outcome {
                    Some(holder) => {
                        check!(
                            liveness != Liveness::Expired,
                            "{at}: inspect reports {holder:?} on a free key"
                        );
                        let current = current.expect("not expired means a lease exists");
                        check!(
                            holder.fence() == current.fence,
                            "{at}: inspect fence {} but the model's lease has {}",
                            holder.fence(),
                            current.fence
                        );
                        model.sighted(key, received);
                    }
                    None => check!(
                        liveness != Liveness::Live,
                        "{at}: inspect says free while {current:?} is live"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Promise 1–4 under random interleavings: `profile.model_cases` random
/// sequences of up to 40 operations, each in a fresh namespace, shrunk to a
/// minimal failing sequence on failure.
pub async fn model_based_sequences(ctx: Ctx) {
    let ctx = &ctx;
    check_sequences(ctx, "model test", op(), move |ops| async move {
        run_sequence(ctx, &ops).await
    })
    .await;
}

/// Runs `profile.model_cases` random sequences of 1 to 40 steps drawn from
/// `step` through `run`, and panics on the first that fails, naming `what`,
/// the case, the failure and the failing sequence shrunk to a minimal one.
/// Shared by the lock's and the ledger's model tests.
///
/// proptest's own runner cannot drive an async test, so its shrinking walk
/// is driven here by hand: simplify while the sequence still fails, step
/// back (complicate) when a simplification made it pass. A real-clock
/// backend gets a smaller shrink budget, each run taking real time.
pub(crate) async fn check_sequences<S, E, F, Fut>(ctx: &Ctx, what: &str, step: S, run: F)
where
    S: Strategy,
    E: fmt::Display,
    F: Fn(Vec<S::Value>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let cases = ctx.profile().model_cases;
    let strategy = proptest::collection::vec(step, 1..40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let shrink_budget = match ctx.profile().clock {
        Clock::Tokio => 1024,
        Clock::Real => 48,
    };
    for case in 0..cases {
        let mut tree = strategy
            .new_tree(&mut runner)
            .expect("the strategy always generates");
        let Err(first) = run(tree.current()).await else {
            continue;
        };
        let mut smallest = (tree.current(), first);
        let mut failing = true;
        for _ in 0..shrink_budget {
            let moved = if failing {
                tree.simplify()
            } else {
                tree.complicate()
            };
            if !moved {
                break;
            }
            match run(tree.current()).await {
                Err(failure) => {
                    smallest = (tree.current(), failure);
                    failing = true;
                }
                Ok(()) => failing = false,
            }
        }
        let (ops, failure) = smallest;
        panic!(
            "{what} case {case} failed: {failure}\nminimal sequence ({} ops):\n{ops:#?}",
            ops.len()
        );
    }
}
