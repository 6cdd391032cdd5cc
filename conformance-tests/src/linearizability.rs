//! A linearizability check of recorded concurrent histories against the
//! lock model.
//!
//! Clients run acquire, renew, release and inspect on one key at the same
//! time, each call recorded with when it was invoked and when it returned.
//! The history is linearizable if the calls can be put in one order that
//! respects real time (a call that returned before another was invoked
//! comes first) and in which every reply is what a single, atomic lock would
//! have answered. The checker searches for that order (the Wing & Gong
//! algorithm, memoised on the set of calls placed and the model's state).
//!
//! "When" is a global counter bumped at every invocation and every return,
//! not a clock: the order it records is the real order of those events, on
//! a busy machine as on an idle one, and with a paused tokio clock.
//!
//! The model (leases long enough never to expire during the check):
//! * acquire(lease): free → `Acquired` with a fence above every fence
//!   handed out before; held by the same lease → `Acquired` with its fence
//!   (a retry); held by another → `Held` with the holder's fence.
//! * renew(lease): `Renewed` if the lease holds the key, else `Lost`.
//! * release(lease): `Released` (and free) if it holds the key, else
//!   `NotHeld`.
//! * inspect: the holder's fence, or free.
//!
//! A call that failed with an error may or may not have happened: it may be
//! placed anywhere after its invocation, with any reply the model allows, or
//! left out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, LeaseId, LockKey, LockStore, OwnerLabel, ReleaseOutcome,
    RenewOutcome, Ttl,
};
use rand::Rng;

use crate::Ctx;

/// A call on the key; leases are numbered per history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `try_acquire` with lease `n`.
    Acquire(u32),
    /// `renew` of lease `n`.
    Renew(u32),
    /// `release` of lease `n`.
    Release(u32),
    /// `inspect`.
    Inspect,
}

/// What a call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Acquired, with this fence.
    Acquired(u64),
    /// Refused: held, by a lease with this fence.
    Held(u64),
    /// Renewed.
    Renewed,
    /// Renew refused.
    Lost,
    /// Released.
    Released,
    /// Release refused.
    NotHeld,
    /// Inspect: held, by a lease with this fence.
    HolderFence(u64),
    /// Inspect: free.
    Free,
    /// An error: the call may or may not have taken effect.
    Unknown,
}

/// One recorded call.
#[derive(Clone, Copy, Debug)]
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

/// The model's state: the holder (its lease, and its fence if a reply has
/// shown it) and the highest fence known so far.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct State {
    holder: Option<(u32, Option<u64>)>,
    max_fence: u64,
}

/// The states `call` can lead to from `state` if it answered `reply` (none
/// if the model would never answer that).
fn step(state: State, call: Call, reply: Reply) -> Vec<State> {
    // A reply naming the holder's fence: it must be the holder's known
    // fence, or — when an acquire whose reply was lost made the holder —
    // any fence above those handed out before, which it then becomes.
    let holder_fence = |lease: u32, fence: Option<u64>, shown: u64| match fence {
        Some(known) if known == shown => vec![state],
        Some(_) => Vec::new(),
        None if shown > state.max_fence => vec![State {
            holder: Some((lease, Some(shown))),
            max_fence: shown,
        }],
        None => Vec::new(),
    };
    match (call, state.holder) {
        (Call::Acquire(lease), None) => match reply {
            // Any fence above the highest: the model cannot know which.
            Reply::Acquired(fence) if fence > state.max_fence => vec![State {
                holder: Some((lease, Some(fence))),
                max_fence: fence,
            }],
            // It may have acquired, with a fence nobody saw (yet).
            Reply::Unknown => vec![
                state,
                State {
                    holder: Some((lease, None)),
                    ..state
                },
            ],
            _ => Vec::new(),
        },
        (Call::Acquire(lease), Some((holder, fence))) if holder == lease => match reply {
            Reply::Unknown => vec![state],
            Reply::Acquired(shown) => holder_fence(holder, fence, shown),
            _ => Vec::new(),
        },
        (Call::Acquire(_), Some((holder, fence))) => match reply {
            Reply::Unknown => vec![state],
            Reply::Held(shown) => holder_fence(holder, fence, shown),
            _ => Vec::new(),
        },
        (Call::Inspect, Some((holder, fence))) => match reply {
            Reply::Unknown => vec![state],
            Reply::HolderFence(shown) => holder_fence(holder, fence, shown),
            _ => Vec::new(),
        },
        (Call::Inspect, None) => match reply {
            Reply::Unknown | Reply::Free => vec![state],
            _ => Vec::new(),
        },
        (Call::Renew(lease), holder) => {
            let holds = matches!(holder, Some((h, _)) if h == lease);
            match reply {
                Reply::Renewed if holds => vec![state],
                Reply::Lost if !holds => vec![state],
                Reply::Unknown => vec![state],
                _ => Vec::new(),
            }
        }
        (Call::Release(lease), holder) => {
            let holds = matches!(holder, Some((h, _)) if h == lease);
            let freed = State {
                holder: None,
                // A holder whose fence nobody saw still used one up.
                max_fence: match holder {
                    Some((_, None)) => state.max_fence + 1,
                    _ => state.max_fence,
                },
            };
            match reply {
                Reply::Released if holds => vec![freed],
                Reply::NotHeld if !holds => vec![state],
                Reply::Unknown if holds => vec![state, freed],
                Reply::Unknown => vec![state],
                _ => Vec::new(),
            }
        }
    }
}

/// Whether `history` is linearizable under the lock model, starting from a
/// free key whose fences so far are below `initial_max_fence + 1`.
///
/// # Errors
/// A message with the history, when no order explains it.
///
/// # Panics
/// For more than 128 calls (the search tracks them in a bit set).
pub fn check(history: &[Event], initial_max_fence: u64) -> Result<(), String> {
    assert!(history.len() <= 128, "at most 128 calls per history");
    let all_known: u128 = history
        .iter()
        .enumerate()
        .filter(|(_, e)| e.reply != Reply::Unknown)
        .fold(0, |set, (i, _)| set | 1 << i);
    let start = State {
        holder: None,
        max_fence: initial_max_fence,
    };
    let mut seen = HashSet::new();
    // Depth-first search over (calls placed, state).
    let mut stack = vec![(0u128, start)];
    while let Some((placed, state)) = stack.pop() {
        if placed & all_known == all_known {
            return Ok(());
        }
        if !seen.insert((placed, state)) {
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
            for next in step(state, event.call, event.reply) {
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
        "no order of these calls is a history of one atomic lock:\n{}",
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

const CLIENTS: usize = 4;
const CALLS_PER_CLIENT: usize = 12;
const ROUNDS: usize = 20;

/// Concurrent histories of acquire, renew, release and inspect on one key,
/// recorded from four clients (each its own store), are linearizable under
/// the lock model — checked for several rounds on fresh keys.
pub async fn lock_histories_are_linearizable(ctx: Ctx) {
    // Long enough that no lease expires during a round, on any backend.
    let ttl = Ttl::new(Duration::from_secs(120)).expect("a valid TTL");
    for round in 0..ROUNDS {
        let key = LockKey::new(format!("linearizable-{round}")).expect("a valid key");
        let recorder = Arc::new(Recorder::default());
        // Lease ids, numbered for the model; all clients draw from it.
        let leases: Arc<Vec<LeaseId>> = Arc::new(
            (0..CLIENTS * CALLS_PER_CLIENT)
                .map(|_| LeaseId::random())
                .collect(),
        );
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let store = ctx.store().await;
            let recorder = Arc::clone(&recorder);
            let leases = Arc::clone(&leases);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                run_client(client, store, key, ttl, recorder, leases).await
            }));
        }
        let mut held = Vec::new();
        for task in tasks {
            held.extend(task.await.expect("a client task panicked"));
        }
        let history = recorder.events.lock().expect("not poisoned").clone();
        if let Err(report) = check(&history, 0) {
            panic!("round {round}: {report}");
        }
        // Leave the key free for nothing in particular: tidy.
        let store = ctx.store().await;
        for lease in held {
            let _ = store.release(&key, leases[lease as usize]).await;
        }
    }
}

/// One client's calls: it acquires with fresh leases, retries, renews and
/// releases its own, and now and then uses a lease it no longer holds.
async fn run_client(
    client: usize,
    store: Arc<dyn LockStore>,
    key: LockKey,
    ttl: Ttl,
    recorder: Arc<Recorder>,
    leases: Arc<Vec<LeaseId>>,
) -> Option<u32> {
    let owner = OwnerLabel::new(format!("client-{client}")).expect("a valid owner");
    // Client `c` uses leases c, c + CLIENTS, c + 2·CLIENTS, …
    let mut next_lease = client as u32;
    let mut current: Option<u32> = None;
    let mut stale: Option<u32> = None;
    for _ in 0..CALLS_PER_CLIENT {
        let choice = rand::rng().random_range(0..10);
        let call = match (current, choice) {
            (_, 0 | 1) => Call::Inspect,
            (Some(lease), 2) => Call::Acquire(lease), // a retry
            (Some(lease), 3..=5) => Call::Renew(lease),
            (Some(lease), _) => Call::Release(lease),
            (None, 2) if stale.is_some() => Call::Renew(stale.unwrap_or_default()),
            (None, 3) if stale.is_some() => Call::Release(stale.unwrap_or_default()),
            (None, _) => {
                let lease = next_lease;
                next_lease += CLIENTS as u32;
                Call::Acquire(lease)
            }
        };
        let invoked = recorder.tick();
        let reply =
            match call {
                Call::Acquire(lease) => store
                    .try_acquire(&AcquireRequest {
                        key: key.clone(),
                        lease_id: leases[lease as usize],
                        ttl,
                        owner: owner.clone(),
                    })
                    .await
                    .map(|outcome| match outcome {
                        AcquireOutcome::Acquired { fence } => Reply::Acquired(fence.get()),
                        AcquireOutcome::Held(holder) => Reply::Held(holder.fence().get()),
                    }),
                Call::Renew(lease) => store.renew(&key, leases[lease as usize], ttl).await.map(
                    |outcome| match outcome {
                        RenewOutcome::Renewed => Reply::Renewed,
                        RenewOutcome::Lost => Reply::Lost,
                    },
                ),
                Call::Release(lease) => {
                    store
                        .release(&key, leases[lease as usize])
                        .await
                        .map(|outcome| match outcome {
                            ReleaseOutcome::Released => Reply::Released,
                            ReleaseOutcome::NotHeld => Reply::NotHeld,
                        })
                }
                Call::Inspect => store.inspect(&key).await.map(|holder| match holder {
                    Some(holder) => Reply::HolderFence(holder.fence().get()),
                    None => Reply::Free,
                }),
            }
            .unwrap_or(Reply::Unknown);
        recorder.record(client, call, reply, invoked);
        match (call, reply) {
            (Call::Acquire(lease), Reply::Acquired(_)) => current = Some(lease),
            (Call::Acquire(lease), Reply::Held(_) | Reply::Unknown) if current != Some(lease) => {
                stale = Some(lease);
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
    fn a_sequential_lock_history_is_accepted() {
        let history = [
            event(0, Call::Acquire(0), Reply::Acquired(5), 0, 1),
            event(1, Call::Acquire(1), Reply::Held(5), 2, 3),
            event(0, Call::Renew(0), Reply::Renewed, 4, 5),
            event(1, Call::Renew(1), Reply::Lost, 6, 7),
            event(0, Call::Release(0), Reply::Released, 8, 9),
            event(1, Call::Acquire(1), Reply::Acquired(9), 10, 11),
            event(0, Call::Inspect, Reply::HolderFence(9), 12, 13),
        ];
        check(&history, 0).unwrap();
    }

    #[test]
    fn overlapping_calls_may_take_effect_in_either_order() {
        // Client 1's acquire overlaps client 0's release: it may come after.
        let history = [
            event(0, Call::Acquire(0), Reply::Acquired(1), 0, 1),
            event(0, Call::Release(0), Reply::Released, 2, 5),
            event(1, Call::Acquire(1), Reply::Acquired(2), 3, 4),
        ];
        check(&history, 0).unwrap();
    }

    #[test]
    fn two_holders_are_rejected() {
        let history = [
            event(0, Call::Acquire(0), Reply::Acquired(1), 0, 1),
            event(1, Call::Acquire(1), Reply::Acquired(2), 2, 3),
        ];
        assert!(check(&history, 0).is_err());
    }

    #[test]
    fn a_fence_that_does_not_rise_is_rejected() {
        let history = [
            event(0, Call::Acquire(0), Reply::Acquired(7), 0, 1),
            event(0, Call::Release(0), Reply::Released, 2, 3),
            event(1, Call::Acquire(1), Reply::Acquired(7), 4, 5),
        ];
        assert!(check(&history, 0).is_err());
    }

    #[test]
    fn a_stale_renewal_that_succeeds_is_rejected() {
        let history = [
            event(0, Call::Acquire(0), Reply::Acquired(1), 0, 1),
            event(0, Call::Release(0), Reply::Released, 2, 3),
            event(0, Call::Renew(0), Reply::Renewed, 4, 5),
        ];
        assert!(check(&history, 0).is_err());
    }

    #[test]
    fn a_failed_call_may_or_may_not_have_happened() {
        // The acquire errored; the later refusal shows it did take effect.
        let with_effect = [
            event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
            event(1, Call::Acquire(1), Reply::Held(1), 1, 2),
        ];
        check(&with_effect, 0).unwrap();
        let without = [
            event(0, Call::Acquire(0), Reply::Unknown, 0, u64::MAX),
            event(1, Call::Acquire(1), Reply::Acquired(3), 1, 2),
        ];
        check(&without, 0).unwrap();
    }
}
