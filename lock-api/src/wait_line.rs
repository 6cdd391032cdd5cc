//! The line of a client's waiters for one key: one of them at the front
//! asks the store, the rest sleep in this process until it is done.
//!
//! Without it, every release of a hot key woke every waiter of it, each
//! sent its attempt and one won: with 64 tasks waiting on a key, a hand-off
//! cost the server 64 requests (on PostgreSQL, 64 statements). In a line,
//! a hand-off costs three: the release, the front waiter's winning attempt,
//! and the attempt of the waiter behind it, which becomes the front, is
//! refused by the new holder, and so asks the store to tell it of that
//! holder's release.
//!
//! The line is a [`tokio::sync::Semaphore`] with one permit per key, so it
//! is first come, first served, and nothing is lost when a waiter leaves:
//! the turn (the permit) passes to the next waiter when the front one
//! acquires the key, gives up, fails, or is cancelled (its future dropped).
//! A waiter joins only after a refused first attempt, so `Wait::No` and a
//! free key cost exactly what they did, and a timed-out waiter still names
//! the holder that refused it.
//!
//! The line is per client (shared by its clones): it orders the tasks of
//! one process. Waiters in other processes have their own fronts, and each
//! release still wakes one front per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Every key's line of one client.
#[derive(Debug, Default)]
pub(crate) struct WaitLines {
    by_key: Mutex<HashMap<String, Line>>,
}

#[derive(Debug)]
struct Line {
    /// One permit: the turn.
    turn: Arc<Semaphore>,
    /// Waiters in the line, the front one included; the line is forgotten
    /// when the last one leaves.
    members: usize,
}

/// A waiter's place at the front of its key's line. Dropping it passes the
/// turn to the next waiter.
#[derive(Debug)]
pub(crate) struct Turn {
    // Fields drop in order: the turn is handed on, then the place is left.
    _permit: Option<OwnedSemaphorePermit>,
    _member: Member,
}

/// Whether a waiter joining a line found another one ahead of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// It was at the front at once.
    No,
    /// It slept until the waiters ahead were done.
    Yes,
}

impl Turn {
    fn new(permit: OwnedSemaphorePermit, member: Member) -> Self {
        Self {
            _permit: Some(permit),
            _member: member,
        }
    }
}

/// A waiter's membership of a line, from joining to leaving (with or
/// without having had the turn).
#[derive(Debug)]
struct Member {
    lines: Arc<WaitLines>,
    key: String,
}

impl WaitLines {
    /// Joins `key`'s line and waits for the turn; says whether another
    /// waiter was ahead (then the key has probably changed hands since
    /// this waiter last asked). Cancel-safe: a waiter dropped while waiting
    /// leaves the line; one dropped with the turn hands it on.
    pub(crate) async fn join(self: &Arc<Self>, key: &str) -> (Turn, Waited) {
        let (turn, member) = self.enter(key);
        if let Ok(permit) = Arc::clone(&turn).try_acquire_owned() {
            return (Turn::new(permit, member), Waited::No);
        }
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = turn.acquire_owned().await.ok();
        (
            Turn {
                _permit: permit,
                _member: member,
            },
            Waited::Yes,
        )
    }

    /// Joins `key`'s line and waits for the turn.
    #[cfg(test)]
    async fn wait_for_turn(self: &Arc<Self>, key: &str) -> Turn {
        self.join(key).await.0
    }

    /// Counts a new member of `key`'s line, which leaves it when the
    /// returned [`Member`] is dropped, and hands out the line's turn.
    fn enter(self: &Arc<Self>, key: &str) -> (Arc<Semaphore>, Member) {
        let turn = {
            let mut lines = lock(&self.by_key);
            let line = lines.entry(key.to_owned()).or_insert_with(|| Line {
                turn: Arc::new(Semaphore::new(1)),
                members: 0,
            });
            line.members += 1;
            Arc::clone(&line.turn)
        };
        // Leaves the line on every path from here, cancellation included.
        let member = Member {
            lines: Arc::clone(self),
            key: key.to_owned(),
        };
        (turn, member)
    }

    /// How many keys have a line (a waiter at the front or behind it).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.by_key).len()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut lines = lock(&self.lines.by_key);
        if let Some(line) = lines.get_mut(&self.key) {
            line.members = line.members.saturating_sub(1);
            if line.members == 0 {
                lines.remove(&self.key);
            }
        }
    }
}

/// A poisoned mutex only means a thread panicked while holding it; every
/// update here leaves the map consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lines() -> Arc<WaitLines> {
        Arc::new(WaitLines::default())
    }

    #[tokio::test]
    async fn one_waiter_at_a_time_first_come_first_served() {
        let lines = lines();
        let first = lines.wait_for_turn("k").await;
        let (sender, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let line = Arc::clone(&lines);
            let sender = sender.clone();
            waiters.push(tokio::spawn(async move {
                let turn = line.wait_for_turn("k").await;
                sender.send(i).expect("the test listens");
                // Holds the turn until the next waiter could overtake.
                tokio::task::yield_now().await;
                drop(turn);
            }));
            // Each joins the line before the next one starts.
            while lines_waiting(&lines, "k") < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(order.try_recv().is_err(), "nobody passes the front");
        drop(first);
        for waiter in waiters {
            waiter.await.expect("no panic");
        }
        let got: Vec<_> = std::iter::from_fn(|| order.try_recv().ok()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(lines.len(), 0, "an empty line is forgotten");
    }

    #[tokio::test]
    async fn other_keys_do_not_wait() {
        let lines = lines();
        let _a = lines.wait_for_turn("a").await;
        let b = tokio::time::timeout(Duration::from_secs(10), lines.wait_for_turn("b")).await;
        assert!(b.is_ok(), "key b has its own line");
    }

    #[tokio::test]
    async fn a_waiter_cancelled_in_line_or_at_the_front_passes_the_turn_on() {
        let lines = lines();
        let front = lines.wait_for_turn("k").await;
        // Cancelled while in line.
        let cancelled = tokio::spawn({
            let lines = Arc::clone(&lines);
            async move { lines.wait_for_turn("k").await }
        });
        while lines_waiting(&lines, "k") < 1 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        assert!(cancelled.await.is_err(), "aborted");
        let last = tokio::spawn({
            let lines = Arc::clone(&lines);
            async move { lines.wait_for_turn("k").await }
        });
        while lines_waiting(&lines, "k") < 1 {
            tokio::task::yield_now().await;
        }
        // The front is dropped (cancelled with its turn): the last waiter
        // gets it, though the one before it left the line.
        drop(front);
        let turn = tokio::time::timeout(Duration::from_secs(10), last)
            .await
            .expect("the turn reached the last waiter")
            .expect("no panic");
        drop(turn);
        assert_eq!(lines.len(), 0);
    }

    /// Waiters queued behind the front of `key`.
    fn lines_waiting(lines: &WaitLines, key: &str) -> usize {
        lock(&lines.by_key)
            .get(key)
            .map_or(0, |line| line.members.saturating_sub(1))
    }
}
