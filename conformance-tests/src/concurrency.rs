//! The concurrent safety test: many tasks, few keys, one fenced resource.
//!
//! Eight tasks race for three keys until the profile's number of successful
//! acquisitions is reached. Inside each critical section a task writes to a
//! shared "fenced resource" that, like a real storage system guarded by
//! fencing tokens, refuses a token lower than the highest it has seen. The
//! test asserts the two things a lock exists for: no two critical sections
//! on one key ever overlap, and no write from a live lease is ever refused
//! (tokens per key are distinct and increase in the order holders enter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstore_api::{AcquireOptions, Backoff, LockClient, LockKey};
use tokio::time::Instant;

use crate::Ctx;

const TASKS: usize = 8;
const KEYS: usize = 3;

#[derive(Default)]
struct KeyRecord {
    highest: u64,
    inside: u32,
    entries: u64,
}

/// A resource that accepts writes only with a token above the highest seen.
#[derive(Default)]
struct FencedResource {
    keys: Mutex<HashMap<usize, KeyRecord>>,
    overlaps: AtomicU64,
    rejected: AtomicU64,
}

impl FencedResource {
    fn enter(&self, key: usize, fence: u64) {
        let mut keys = self.keys.lock().expect("not poisoned");
        let record = keys.entry(key).or_default();
        if record.inside > 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        if fence <= record.highest {
            self.rejected.fetch_add(1, Ordering::SeqCst);
        } else {
            record.highest = fence;
        }
        record.inside += 1;
        record.entries += 1;
    }

    fn exit(&self, key: usize) {
        let mut keys = self.keys.lock().expect("not poisoned");
        keys.get_mut(&key).expect("entered before").inside -= 1;
    }
}

/// Promise 1 and 3 under real parallelism: ≥ 8 tasks, ≤ 3 keys,
/// `profile.concurrent_acquisitions` acquisitions, zero overlaps, zero
/// refused writes.
pub async fn concurrent_holders_never_overlap(ctx: Ctx) {
    let target = ctx.profile().concurrent_acquisitions;
    let store = ctx.store().await;
    let resource = Arc::new(FencedResource::default());
    let acquired = Arc::new(AtomicU64::new(0));
    // Long enough that no lease expires mid-section on a loaded machine:
    // an overlap here must mean a broken lock, not a slow test.
    let options = AcquireOptions::new(Duration::from_secs(60)).wait_forever();
    let keys: Arc<Vec<LockKey>> = Arc::new(
        (0..KEYS)
            .map(|k| LockKey::new(format!("contended-{k}")).expect("valid"))
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let client = LockClient::from_arc(Arc::clone(&store)).with_backoff(Backoff::new(
            Duration::from_micros(200),
            Duration::from_millis(20),
        ));
        let (resource, acquired, keys) = (
            Arc::clone(&resource),
            Arc::clone(&acquired),
            Arc::clone(&keys),
        );
        tasks.push(tokio::spawn(async move {
            let mut turn = task;
            while acquired.load(Ordering::Relaxed) < target {
                let k = turn % KEYS;
                turn += 1;
                let lease = client
                    .acquire_lease(&keys[k], options)
                    .await
                    .unwrap_or_else(|e| panic!("task {task}: acquire failed: {e}"));
                resource.enter(k, lease.fence().get());
                tokio::task::yield_now().await;
                resource.exit(k);
                acquired.fetch_add(1, Ordering::Relaxed);
                client
                    .release(&lease)
                    .await
                    .unwrap_or_else(|e| panic!("task {task}: release failed: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
    let total = acquired.load(Ordering::SeqCst);
    let elapsed = started.elapsed();
    tracing::info!(
        total,
        ?elapsed,
        per_second = total as f64 / elapsed.as_secs_f64(),
        "concurrent acquisitions"
    );
    assert!(total >= target, "only {total} of {target} acquisitions");
    assert_eq!(
        resource.overlaps.load(Ordering::SeqCst),
        0,
        "critical sections overlapped"
    );
    assert_eq!(
        resource.rejected.load(Ordering::SeqCst),
        0,
        "the fenced resource refused a live holder"
    );
    let entries: u64 = resource
        .keys
        .lock()
        .expect("not poisoned")
        .values()
        .map(|r| r.entries)
        .sum();
    assert_eq!(entries, total);
}
