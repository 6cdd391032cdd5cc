//! A linearizability check of recorded concurrent permit histories against
//! the semaphore model, in the style of the lock's
//! ([`crate::linearizability`]).
//!
//! Clients take, retry, renew, release and inspect permits of one key with
//! limit N at the same time, each call recorded with when it was invoked and
//! when it returned (a global counter, not a clock). The history is
//! linearizable if the calls can be put in one order that respects real
//! time and in which every reply is what one atomic semaphore would have
//! answered. The checker searches for that order (Wing & Gong, memoised on
//! the calls placed and the model's state).
//!
//! The model (permits long enough never to expire during the check):
//! * acquire(p): p holds → `Granted` with its fence (a retry); fewer than N
//!   hold → `Granted` with a fence above every fence granted before; else
//!   `Refused` naming exactly the N holders' fences.
//! * renew(p): `Renewed` if p holds, else `Lost`.
//! * release(p): `Released` (and p holds no more) if p holds, else
//!   `NotHeld`.
//! * inspect: exactly the holders' fences (none: free).
//!
//! A call that failed with an error may or may not have happened: it may be
//! placed anywhere after its invocation, with any reply the model allows, or
//! left out. An acquire that errored yet took a permit made a holder whose
//! fence nobody saw: it lies above the fences granted before it and below
//! those granted after it while it held, and a later reply that shows it
//! (a refusal, an inspection, a retry) fixes it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lockstore_api::semaphore::{PermitLimit, PermitOutcome, PermitRequest, SemaphoreStore};
use lockstore_api::{LeaseId, LockKey, OwnerLabel, ReleaseOutcome, RenewOutcome, Ttl};
use rand::Rng;

use crate::Ctx;

/// A call on the key; permits are numbered per history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `try_acquire_permit` with permit id `n`.
    Acquire(u32),
    /// `renew_permit` of permit `n`.
    Renew(u32),
    /// `release_permit` of permit `n`.
    Release(u32),
    /// `inspect_permits`.
    Inspect,
}

/// What a call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Granted, with this fence.
    Granted(u64),
    /// Refused, naming the holders' fences.
    Refused(Vec<u64>),
    /// Renewed.
    Renewed,
    /// Renew refused.
    Lost,
    /// Released.
    Released,
    /// Release refused.
    NotHeld,
    /// Inspect: the holders' fences (empty: no permit is held).
    Holders(Vec<u64>),
    /// An error: the call may or may not have taken effect.
    Unknown,
}

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Event {
    /// Which client made it.
    pub client: usize,
    /// The call.
    pub call: Call,
    /// The reply.
    pub reply: Reply,
    /// When it was invoked (the history's counter).
    pub invoked: u64,
    /// When it returned; [`u64::MAX`] for [`Reply::Unknown`].
    pub returned: u64,
}

/// A holder's fence: seen in a reply, or (an errored acquire's) only known
/// to lie strictly between `above` and `below`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Fence {
    Known(u64),
    Unseen { above: u64, below: u64 },
}

impl Fence {
    /// The least value the fence can have.
    fn least(self) -> u64 {
        match self {
            Fence::Known(fence) => fence,
            Fence::Unseen { above, .. } => above + 1,
        }
    }
}

/// The model's state: the holders (permit, fence), sorted, and the highest
/// fence granted so far.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    holders: Vec<(u32, Fence)>,
    max_fence: u64,
}

impl State {
    fn holds(&self, permit: u32) -> Option<usize> {
        self.holders.iter().position(|&(p, _)| p == permit)
    }

    /// The highest fence any grant so far may have had: a new grant must
    /// be above it.
    fn floor(&self) -> u64 {
        self.holders
            .iter()
            .map(|&(_, fence)| fence.least())
            .fold(self.max_fence, u64::max)
    }

    /// A new holder `permit` with `fence`. A known fence bounds from above
    /// every unseen one (granted earlier, so lower); between two unseen
    /// fences the order is not tracked, which only lets more histories pass.
    fn grant(&self, permit: u32, fence: Fence) -> State {
        let mut next = self.clone();
        if let Fence::Known(f) = fence {
            for (_, held) in &mut next.holders {
                if let Fence::Unseen { below, .. } = held {
                    *below = (*below).min(f);
                }
            }
            next.max_fence = next.max_fence.max(f);
        }
        next.holders.push((permit, fence));
        next.holders.sort_unstable();
        next
    }

    /// Without holder `i`; an unseen fence still used one up.
    fn without(&self, i: usize) -> State {
        let mut next = self.clone();
        let (_, fence) = next.holders.remove(i);
        next.max_fence = next.max_fence.max(fence.least());
        next
    }
}

/// The states in which a reply naming `shown` (every holder's fence) is
/// right: the seen fences match exactly, the rest fix the unseen ones.
fn shown_holders(state: &State, shown: &[u64]) -> Vec<State> {
    if shown.len() != state.holders.len() {
        return Vec::new();
    }
    let mut rest: Vec<u64> = shown.to_vec();
    for &(_, fence) in &state.holders {
        if let Fence::Known(f) = fence {
            match rest.iter().position(|&s| s == f) {
                Some(i) => {
                    rest.swap_remove(i);
                }
                None => return Vec::new(),
            }
        }
    }
    let unseen: Vec<usize> = (0..state.holders.len())
        .filter(|&i| matches!(state.holders[i].1, Fence::Unseen { .. }))
        .collect();
    let mut states = Vec::new();
    assign(state, &unseen, &mut rest, &mut states);
    states
}

/// Every way of giving the holders `unseen` the fences `rest`, within their
/// bounds.
fn assign(state: &State, unseen: &[usize], rest: &mut Vec<u64>, out: &mut Vec<State>) {
    let Some((&i, others)) = unseen.split_first() else {
        out.push(state.clone());
        return;
    };
    let Fence::Unseen { above, below } = state.holders[i].1 else {
        unreachable!("only unseen holders are assigned");
    };
    for j in 0..rest.len() {
        let f = rest[j];
        if f <= above || f >= below {
            continue;
        }
        let mut next = state.clone();
        next.holders[i].1 = Fence::Known(f);
        next.max_fence = next.max_fence.max(f);
        rest.remove(j);
        assign(&next, others, rest, out);
        rest.insert(j, f);
    }
}

/// The states `call` can lead to from `state` if it answered `reply` (none
/// if the model would never answer that), on a key with limit `limit`.
fn step(state: &State, limit: usize, call: Call, reply: &Reply) -> Vec<State> {
    match call {
        Call::Acquire(permit) => match (state.holds(permit), reply) {
            (_, Reply::Unknown) if state.holds(permit).is_some() => vec![state.clone()],
            (Some(i), Reply::Granted(shown)) => match state.holders[i].1 {
                Fence::Known(f) if f == *shown => vec![state.clone()],
                Fence::Known(_) => Vec::new(),
                Fence::Unseen { above, below } if above < *shown && *shown < below => {
                    let mut next = state.clone();
                    next.holders[i].1 = Fence::Known(*shown);
                    next.max_fence = next.max_fence.max(*shown);
                    vec![next]
                }
                Fence::Unseen { .. } => Vec::new(),
            },
            (None, Reply::Granted(fence)) if state.holders.len() < limit => {
                if *fence > state.floor() {
                    vec![state.grant(permit, Fence::Known(*fence))]
                } else {
                    Vec::new()
                }
            }
            (None, Reply::Refused(shown)) if state.holders.len() == limit => {
                shown_holders(state, shown)
            }
            (None, Reply::Unknown) if state.holders.len() < limit => vec![
                state.clone(),
                state.grant(
                    permit,
                    Fence::Unseen {
                        above: state.floor(),
                        below: u64::MAX,
                    },
                ),
            ],
            (None, Reply::Unknown) => vec![state.clone()],
            _ => Vec::new(),
        },
        Call::Renew(permit) => {
            let holds = state.holds(permit).is_some();
            match reply {
                Reply::Renewed if holds => vec![state.clone()],
                Reply::Lost if !holds => vec![state.clone()],
                Reply::Unknown => vec![state.clone()],
                _ => Vec::new(),
            }
        }
        Call::Release(permit) => match (state.holds(permit), reply) {
            (Some(i), Reply::Released) => vec![state.without(i)],
            (Some(i), Reply::Unknown) => vec![state.clone(), state.without(i)],
            (None, Reply::NotHeld | Reply::Unknown) => vec![state.clone()],
            _ => Vec::new(),
        },
        Call::Inspect => match reply {
            Reply::Unknown => vec![state.clone()],
            Reply::Holders(shown) => shown_holders(state, shown),
            _ => Vec::new(),
        },
    }
}

/// Whether `history` is linearizable under the semaphore model with limit
/// `limit`, starting from a key with no permits whose fences so far are at
/// most `initial_max_fence`.
///
/// # Errors
/// A message with the history, when no order explains it.
///
/// # Panics
/// For more than 128 calls (the search tracks them in a bit set).
pub fn check(history: &[Event], limit: u32, initial_max_fence: u64) -> Result<(), String> {
    assert!(history.len() <= 128, "at most 128 calls per history");
    let limit = limit as usize;
    let all_known: u128 = history
        .iter()
        .enumerate()
        .filter(|(_, e)| e.reply != Reply::Unknown)
        .fold(0, |set, (i, _)| set | 1 << i);
    let start = State {
        holders: Vec::new(),
        max_fence: initial_max_fence,
    };
    let mut seen = HashSet::new();
    // Depth-first search over (calls placed, state).
    let mut stack = vec![(0u128, start)];
    while let Some((placed, state)) = stack.pop() {
        if placed & all_known == all_known {
            return Ok(());
        }
        if !seen.insert((placed, state.clone())) {
            continue;
        }
        // A call may go next if no unplaced call returned before it began.
        let horizon = history
            .iter()
            .enumerate()
            .filter(|(i, _)| placed & (1 << i) == 0)
            .map(|(_, e)| e.returned)
            .min()
            .unwrap_or(u64::MAX);
        for (i, event) in history.iter().enumerate() {
            if placed & (1 << i) != 0 || event.invoked > horizon {
                continue;
            }
            for next in step(&state, limit, event.call, &event.reply) {
                stack.push((placed | 1 << i, next));
            }
        }
    }
    let mut lines: Vec<String> = history
        .iter()
        .map(|e| {
            format!(
                "  [{:>4} .. {:>4}] client {} {:?} -> {:?}",
                e.invoked,
                if e.returned == u64::MAX {
                    "?".to_owned()
                } else {
                    e.returned.to_string()
                },
                e.client,
                e.call,
                e.reply
            )
        })
        .collect();
    lines.sort();
    Err(format!(
        "no order of these calls is a history of one atomic semaphore of limit {limit}:\n{}",
        lines.join("\n")
    ))
}

/// Records calls with invocation and return counters.
#[derive(Default)]
struct Recorder {
    clock: AtomicU64,
    events: std::sync::Mutex<Vec<Event>>,
}

impl Recorder {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn record(&self, client: usize, call: Call, reply: Reply, invoked: u64) {
        let returned = if reply == Reply::Unknown {
            u64::MAX
        } else {
            self.tick()
        };
        self.events.lock().expect("not poisoned").push(Event {
            client,
            call,
            reply,
            invoked,
            returned,
        });
    }
}

const CLIENTS: usize = 5;
const CALLS_PER_CLIENT: usize = 12;
const ROUNDS: u32 = 9;

/// Concurrent histories of permit acquire (fresh and retried), renew,
/// release and inspect on one key, recorded from five clients (each its own
/// store) with limits 1 to 3 in turn, are linearizable under the semaphore
/// model: never more than N holders, renew and release by holders only,
/// fences rising in order of grant.
pub async fn semaphore_histories_are_linearizable(ctx: Ctx) {
    // Long enough that no permit expires during a round, on any backend.
    let ttl = Ttl::new(Duration::from_secs(120)).expect("a valid TTL");
    for round in 0..ROUNDS {
        let limit = PermitLimit::new(1 + round % 3).expect("a valid limit");
        let key = LockKey::new(format!("sem-linearizable-{round}")).expect("a valid key");
        let recorder = Arc::new(Recorder::default());
        // Permit ids, numbered for the model; all clients draw from it.
        let permits: Arc<Vec<LeaseId>> = Arc::new(
            (0..CLIENTS * CALLS_PER_CLIENT)
                .map(|_| LeaseId::random())
                .collect(),
        );
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let store = ctx.semaphore().await;
            let recorder = Arc::clone(&recorder);
            let permits = Arc::clone(&permits);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let run = Run {
                    client,
                    key,
                    limit,
                    ttl,
                };
                run.calls(store, recorder, permits).await
            }));
        }
        let mut held = Vec::new();
        for task in tasks {
            held.extend(task.await.expect("a client task panicked"));
        }
        let history = recorder.events.lock().expect("not poisoned").clone();
        if let Err(report) = check(&history, limit.get(), 0) {
            panic!("round {round}: {report}");
        }
        let store = ctx.semaphore().await;
        for permit in held {
            let _ = store.release_permit(&key, permits[permit as usize]).await;
        }
    }
}

/// One client's part of a round.
struct Run {
    client: usize,
    key: LockKey,
    limit: PermitLimit,
    ttl: Ttl,
}

impl Run {
    /// The client's calls: it takes permits with fresh ids, retries,
    /// renews and releases its own, and now and then uses a permit it no
    /// longer holds. Returns the permit it still holds, if any.
    async fn calls(
        &self,
        store: Arc<dyn SemaphoreStore>,
        recorder: Arc<Recorder>,
        permits: Arc<Vec<LeaseId>>,
    ) -> Option<u32> {
        // Client `c` uses permits c, c + CLIENTS, c + 2·CLIENTS, …
        let mut next_permit = self.client as u32;
        let mut current: Option<u32> = None;
        let mut stale: Option<u32> = None;
        for _ in 0..CALLS_PER_CLIENT {
            let choice = rand::rng().random_range(0..10);
            let call = match (current, choice) {
                (_, 0 | 1) => Call::Inspect,
                (Some(permit), 2) => Call::Acquire(permit), // a retry
                (Some(permit), 3..=5) => Call::Renew(permit),
                (Some(permit), _) => Call::Release(permit),
                (None, 2) if stale.is_some() => Call::Renew(stale.unwrap_or_default()),
                (None, 3) if stale.is_some() => Call::Release(stale.unwrap_or_default()),
                (None, _) => {
                    let permit = next_permit;
                    next_permit += CLIENTS as u32;
                    Call::Acquire(permit)
                }
            };
            let invoked = recorder.tick();
            let reply = self
                .send(&*store, call, &permits)
                .await
                .unwrap_or(Reply::Unknown);
            recorder.record(self.client, call, reply.clone(), invoked);
            match (call, reply) {
                (Call::Acquire(permit), Reply::Granted(_)) => current = Some(permit),
                (Call::Acquire(permit), Reply::Refused(_) | Reply::Unknown)
                    if current != Some(permit) =>
                {
                    stale = Some(permit);
                }
                (Call::Renew(_), Reply::Lost)
                | (Call::Release(_), Reply::Released | Reply::NotHeld) => {
                    stale = current.take().or(stale);
                }
                _ => {}
            }
        }
        current
    }

    async fn send(
        &self,
        store: &dyn SemaphoreStore,
        call: Call,
        permits: &[LeaseId],
    ) -> Result<Reply, lockstore_api::LockError> {
        let fences = |permits: lockstore_api::semaphore::Permits| {
            let mut fences: Vec<u64> = permits.holders.iter().map(|h| h.fence().get()).collect();
            fences.sort_unstable();
            fences
        };
        Ok(match call {
            Call::Acquire(permit) => {
                let request = PermitRequest {
                    key: self.key.clone(),
                    permit_id: permits[permit as usize],
                    limit: self.limit,
                    ttl: self.ttl,
                    owner: OwnerLabel::new(format!("client-{}", self.client))
                        .expect("a valid owner"),
                };
                match store.try_acquire_permit(&request).await? {
                    PermitOutcome::Granted { fence } => Reply::Granted(fence.get()),
                    PermitOutcome::Refused(holders) => Reply::Refused(fences(holders)),
                }
            }
            Call::Renew(permit) => {
                match store
                    .renew_permit(&self.key, permits[permit as usize], self.ttl)
                    .await?
                {
                    RenewOutcome::Renewed => Reply::Renewed,
                    RenewOutcome::Lost => Reply::Lost,
                }
            }
            Call::Release(permit) => {
                match store
                    .release_permit(&self.key, permits[permit as usize])
                    .await?
                {
                    ReleaseOutcome::Released => Reply::Released,
                    ReleaseOutcome::NotHeld => Reply::NotHeld,
                }
            }
            Call::Inspect => Reply::Holders(
                store
                    .inspect_permits(&self.key)
                    .await?
                    .map_or_else(Vec::new, fences),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(client: usize, call: Call, reply: Reply, invoked: u64, returned: u64) -> Event {
        Event {
            client,
            call,
            reply,
            invoked,
            returned,
        }
    }

    #[test]
    fn a_sequential_permit_history_is_accepted() {
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(5), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(6), 2, 3),
            event(2, Call::Acquire(2), Reply::Refused(vec![5, 6]), 4, 5),
            event(0, Call::Acquire(0), Reply::Granted(5), 6, 7),
            event(0, Call::Renew(0), Reply::Renewed, 8, 9),
            event(2, Call::Renew(2), Reply::Lost, 10, 11),
            event(2, Call::Release(2), Reply::NotHeld, 12, 13),
            event(0, Call::Release(0), Reply::Released, 14, 15),
            event(2, Call::Acquire(2), Reply::Granted(9), 16, 17),
            event(1, Call::Inspect, Reply::Holders(vec![6, 9]), 18, 19),
            event(1, Call::Release(1), Reply::Released, 20, 21),
            event(2, Call::Release(2), Reply::Released, 22, 23),
            event(0, Call::Inspect, Reply::Holders(vec![]), 24, 25),
        ];
        check(&history, 2, 0).unwrap();
    }

    #[test]
    fn overlapping_calls_may_take_effect_in_either_order() {
        // Client 2's acquire overlaps client 0's release: it may come after,
        // and client 1's refusal, before.
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(2), 2, 3),
            event(0, Call::Release(0), Reply::Released, 4, 9),
            event(2, Call::Acquire(2), Reply::Granted(3), 5, 7),
            event(3, Call::Acquire(3), Reply::Refused(vec![1, 2]), 6, 8),
        ];
        check(&history, 2, 0).unwrap();
    }

    #[test]
    fn more_holders_than_the_limit_are_rejected() {
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(2), 2, 3),
            event(2, Call::Acquire(2), Reply::Granted(3), 4, 5),
        ];
        assert!(check(&history, 2, 0).is_err());
        // Even when all three overlap.
        let overlapping = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 3),
            event(1, Call::Acquire(1), Reply::Granted(2), 1, 4),
            event(2, Call::Acquire(2), Reply::Granted(3), 2, 5),
        ];
        assert!(check(&overlapping, 2, 0).is_err());
        check(&overlapping, 3, 0).unwrap();
    }

    #[test]
    fn a_reused_fence_is_rejected() {
        // While the first is held…
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(4), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(4), 2, 3),
        ];
        assert!(check(&history, 2, 0).is_err());
        // …and after it was released.
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(4), 0, 1),
            event(0, Call::Release(0), Reply::Released, 2, 3),
            event(1, Call::Acquire(1), Reply::Granted(4), 4, 5),
        ];
        assert!(check(&history, 2, 0).is_err());
    }

    #[test]
    fn fences_must_rise_in_order_of_grant() {
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(7), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(3), 2, 3),
        ];
        assert!(check(&history, 2, 0).is_err());
        // Overlapping grants may have been made in either order.
        let overlapping = [
            event(0, Call::Acquire(0), Reply::Granted(7), 0, 2),
            event(1, Call::Acquire(1), Reply::Granted(3), 1, 3),
        ];
        check(&overlapping, 2, 0).unwrap();
        // The first fence must lie above the key's earlier ones.
        let history = [event(0, Call::Acquire(0), Reply::Granted(3), 0, 1)];
        assert!(check(&history, 1, 3).is_err());
    }

    #[test]
    fn a_release_by_a_non_holder_that_succeeds_is_rejected() {
        let history = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(1, Call::Release(1), Reply::Released, 2, 3),
        ];
        assert!(check(&history, 2, 0).is_err());
        let released_twice = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(0, Call::Release(0), Reply::Released, 2, 3),
            event(0, Call::Release(0), Reply::Released, 4, 5),
        ];
        assert!(check(&released_twice, 2, 0).is_err());
        let renewed_by_refused = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(1, Call::Acquire(1), Reply::Refused(vec![1]), 2, 3),
            event(1, Call::Renew(1), Reply::Renewed, 4, 5),
        ];
        assert!(check(&renewed_by_refused, 1, 0).is_err());
    }

    #[test]
    fn a_refusal_or_inspection_must_name_exactly_the_holders() {
        let base = [
            event(0, Call::Acquire(0), Reply::Granted(1), 0, 1),
            event(1, Call::Acquire(1), Reply::Granted(2), 2, 3),
        ];
        for wrong in [
            Reply::Refused(vec![1]),
            Reply::Refused(vec![1, 3]),
            Reply::Refused(vec![1, 2, 2]),
        ] {
            let mut history = base.to_vec();
            history.push(event(2, Call::Acquire(2), wrong, 4, 5));
            assert!(check(&history, 2, 0).is_err());
        }
        // A refusal while a permit is free.
        let mut history = base.to_vec();
        history.push(event(2, Call::Acquire(2), Reply::Refused(vec![1, 2]), 4, 5));
        assert!(check(&history, 3, 0).is_err());
        let mut history = base.to_vec();
        history.push(event(2, Call::Inspect, Reply::Holders(vec![2]), 4, 5));
        assert!(check(&history, 2, 0).is_err());
    }

    #[test]
    fn a_failed_acquire_may_or_may_not_have_taken_a_permit() {
        // The refusal shows that it did, with a fence between its
        // neighbours' — here, below the grant made after it.
        let with_effect = [
            event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
            event(1, Call::Acquire(1), Reply::Granted(5), 1, 2),
            event(2, Call::Acquire(2), Reply::Refused(vec![3, 5]), 3, 4),
        ];
        check(&with_effect, 2, 0).unwrap();
        let without = [
            event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
            event(1, Call::Acquire(1), Reply::Granted(5), 1, 2),
            event(2, Call::Acquire(2), Reply::Granted(6), 3, 4),
        ];
        check(&without, 2, 0).unwrap();
        // It began before the grant of 5 returned, so it may also have come
        // after it, with 6; but a fence of 5 is taken and 0 too low.
        for impossible in [5, 0] {
            let history = [
                event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
                event(1, Call::Acquire(1), Reply::Granted(5), 1, 2),
                event(
                    2,
                    Call::Acquire(2),
                    Reply::Refused(vec![impossible, 5]),
                    3,
                    4,
                ),
            ];
            assert!(check(&history, 2, 0).is_err());
        }
        // Once its fence is seen, it holds: a third holder is too many.
        let too_many = [
            event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
            event(1, Call::Inspect, Reply::Holders(vec![3]), 1, 2),
            event(1, Call::Acquire(1), Reply::Granted(5), 3, 4),
            event(2, Call::Acquire(2), Reply::Granted(6), 5, 6),
        ];
        assert!(check(&too_many, 2, 0).is_err());
    }
}
