//! The ledger's concurrent test: workers race over many keys with
//! `run_once`, some "crash" mid-run (their future is dropped), and every key
//! must end succeeded exactly once in the resource it writes to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore_api::ledger::{Ledger, RunFailure, RunOnce, RunOptions, RunStatus};
use lockstore_api::{Backoff, LockKey};
use tokio::sync::oneshot;

use crate::Ctx;

const WORKERS: usize = 8;
const KEYS: usize = 200;
/// One run in this many crashes before writing.
const CRASH_ONE_IN: u64 = 8;

#[derive(Default)]
struct KeyState {
    /// Runs inside their work right now.
    inside: u32,
    /// The highest fence the resource accepted.
    highest: u64,
    /// Writes the resource accepted.
    commits: u32,
    /// Runs that entered the work (started attempts, crashed ones included).
    entered: u32,
}

/// The resource the work writes to: refuses fences not above the highest
/// it accepted, and counts overlaps and commits per key.
#[derive(Default)]
struct Resource {
    keys: Mutex<HashMap<usize, KeyState>>,
    overlaps: AtomicU64,
    refused: AtomicU64,
}

impl Resource {
    fn enter(&self, key: usize) {
        let mut keys = self.keys.lock().expect("not poisoned");
        let state = keys.entry(key).or_default();
        if state.inside > 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        state.inside += 1;
        state.entered += 1;
    }

    fn commit(&self, key: usize, fence: u64) {
        let mut keys = self.keys.lock().expect("not poisoned");
        let state = keys.get_mut(&key).expect("entered first");
        if fence <= state.highest {
            self.refused.fetch_add(1, Ordering::SeqCst);
        } else {
            state.highest = fence;
            state.commits += 1;
        }
    }

    fn leave(&self, key: usize) {
        let mut keys = self.keys.lock().expect("not poisoned");
        keys.get_mut(&key).expect("entered first").inside -= 1;
    }
}

/// Leaves the resource when dropped, so a crashed (dropped) run leaves too.
struct Inside<'a>(&'a Resource, usize);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// 8 workers × 200 keys, each worker visiting every key in its own order
/// until all have succeeded; one run in 8 crashes (its future is dropped
/// mid-work). Every key ends `succeeded` with exactly one commit in the
/// resource, no two runs of a key overlap, no live run's write is refused,
/// and each record's attempt count equals the runs that entered the work.
pub async fn ledger_concurrent_workers_run_each_key_once(ctx: Ctx) {
    let ledger_store = ctx.ledger().await;
    let resource = Arc::new(Resource::default());
    let keys: Arc<Vec<LockKey>> = Arc::new(
        (0..KEYS)
            .map(|k| LockKey::new(format!("job-{k:03}")).expect("valid"))
            .collect(),
    );
    // Long leases: a run that is merely slow on a loaded machine must not
    // be taken over, so an overlap means a broken ledger.
    let options = RunOptions::new(Duration::from_secs(60)).max_attempts(1000);
    let crashes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let ledger = Ledger::from_arc(Arc::clone(&ledger_store)).with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(20),
        ));
        let (resource, keys, options, crashes) = (
            Arc::clone(&resource),
            Arc::clone(&keys),
            options.clone(),
            Arc::clone(&crashes),
        );
        tasks.push(tokio::spawn(async move {
            let mut done = [false; KEYS];
            let mut turn = worker * 7;
            let mut runs = 0u64;
            while done.iter().any(|d| !d) {
                let k = turn % KEYS;
                turn += 1;
                if done[k] {
                    continue;
                }
                runs += 1;
                let crash = rand::random::<u64>().is_multiple_of(CRASH_ONE_IN);
                let (crashed_tx, crashed_rx) = oneshot::channel::<()>();
                let resource_for_work = Arc::clone(&resource);
                let run = ledger.run_once(&keys[k], options.clone(), move |lease| async move {
                    resource_for_work.enter(k);
                    let _inside = Inside(&resource_for_work, k);
                    tokio::task::yield_now().await;
                    if crash {
                        // Crash before writing: tell the worker to drop us.
                        let _ = crashed_tx.send(());
                        std::future::pending::<()>().await;
                    }
                    resource_for_work.commit(k, lease.fence().get());
                    Ok::<u64, RunFailure>(lease.fence().get())
                });
                let outcome = tokio::select! {
                    outcome = run => Some(outcome),
                    Ok(()) = crashed_rx => None,
                };
                match outcome {
                    None => {
                        crashes.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(RunOnce::Ran { .. } | RunOnce::AlreadySucceeded { .. })) => {
                        done[k] = true;
                    }
                    Some(Ok(RunOnce::Running { .. })) => tokio::task::yield_now().await,
                    Some(Ok(other)) => panic!("worker {worker}: key {k}: unexpected {other:?}"),
                    Some(Err(err)) => panic!("worker {worker}: key {k}: {err}"),
                }
            }
            runs
        }));
    }
    let mut runs = 0;
    for task in tasks {
        runs += task.await.expect("a worker panicked");
    }
    tracing::info!(
        runs,
        crashes = crashes.load(Ordering::SeqCst),
        "ledger workers done"
    );
    assert_eq!(
        resource.overlaps.load(Ordering::SeqCst),
        0,
        "two runs of a key overlapped"
    );
    assert_eq!(
        resource.refused.load(Ordering::SeqCst),
        0,
        "a live run's write was refused"
    );
    let counts: HashMap<usize, (u32, u32)> = resource
        .keys
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(k, state)| (*k, (state.commits, state.entered)))
        .collect();
    for (k, key) in keys.iter().enumerate() {
        let &(commits, entered) = counts.get(&k).unwrap_or_else(|| panic!("{key} never ran"));
        assert_eq!(commits, 1, "{key} committed {commits} times");
        let record = ledger_store
            .get(key)
            .await
            .expect("get works")
            .expect("every key has a record");
        assert_eq!(record.status, RunStatus::Succeeded, "{key}");
        assert_eq!(
            record.attempts, entered,
            "{key}: attempts counted {} but {entered} runs entered the work",
            record.attempts
        );
    }
}
