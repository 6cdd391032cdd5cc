//! An in-process [`LockStore`]: for unit tests of code that takes locks, and
//! for programs whose lock holders all live in one process.
//!
//! Time comes from [`tokio::time`], so a test that calls
//! `tokio::time::pause()` (or uses `#[tokio::test(start_paused = true)]`)
//! controls expiry exactly and instantly.
//!
//! ```
//! use std::time::Duration;
//! use lockstore_api::{AcquireOptions, LockClient};
//! use lockstore_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lockstore_api::LockError> {
//! let client = LockClient::new(MemoryStore::new());
//! let guard = client.acquire("report", AcquireOptions::new(Duration::from_secs(10))).await?;
//! assert!(client.try_acquire("report", Duration::from_secs(10)).await?.is_none());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! * Fencing tokens come from one counter per namespace, so they strictly
//!   increase for every key even after idle keys are forgotten.
//! * Memory is bounded by the live keys: a released key is forgotten at once,
//!   an expired one at the next sweep (every few thousand operations).
//! * Waiting acquires are woken by the release itself, not by a timer.
//! * The store is also a semaphore store
//!   ([`SemaphoreStore`](lockstore_api::semaphore::SemaphoreStore)): permits
//!   share the fence counter and wake waiters when released.
//! * The store is also an execution ledger
//!   ([`LedgerStore`](lockstore_api::ledger::LedgerStore)): run records live
//!   beside the locks, share the fence counter, and wake waiters when a run
//!   ends. Record times follow tokio's clock, mapped onto the wall clock
//!   when the namespace was created.

#![forbid(unsafe_code)]

mod ledger;
mod semaphore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, Holder, LeaseId, LockError, LockKey, LockStore,
    OwnerLabel, ReleaseOutcome, ReleaseSignal, RenewOutcome, Ttl,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// Operations between sweeps of expired, unreleased keys.
const SWEEP_EVERY: u32 = 4096;

/// An in-process lock store. Clones share the same locks.
///
/// [`MemoryStore::namespace`] gives an isolated set of locks that shares
/// nothing with the others but the registry.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    shard: Arc<Shard>,
    registry: Arc<Mutex<HashMap<String, Arc<Shard>>>>,
}

#[derive(Debug, Default)]
struct Shard {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<LockKey, Slot>,
    /// The execution ledger's records, apart from the locks.
    runs: ledger::Runs,
    semaphores: semaphore::Semaphores,
    /// The last fencing token handed out in this namespace, to locks and
    /// runs alike. One counter for all keys is what lets a key be forgotten
    /// (released, or purged from the ledger) without its next token going
    /// backwards.
    last_fence: u64,
    ops_since_sweep: u32,
}

#[derive(Debug, Default)]
struct Slot {
    lease: Option<Held>,
    /// Created by the first waiter; a release with no waiters costs nothing.
    released: Option<watch::Sender<()>>,
}

#[derive(Debug)]
struct Held {
    id: LeaseId,
    fence: FencingToken,
    owner: OwnerLabel,
    expires_at: Instant,
}

impl Held {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    fn report(&self, now: Instant) -> Holder {
        Holder::new(self.owner.as_str(), self.fence, self.expires_at - now)
    }
}

impl Slot {
    fn live_lease(&self, now: Instant) -> Option<&Held> {
        self.lease.as_ref().filter(|held| held.is_live(now))
    }

    fn has_waiters(&self) -> bool {
        self.released
            .as_ref()
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.live_lease(now).is_none() && !self.has_waiters()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store of namespace `name`: its locks are independent of this
    /// store's and of every other namespace's. Asking twice for the same name
    /// gives stores that share locks.
    pub fn namespace(&self, name: &str) -> MemoryStore {
        let mut registry = lock(&self.registry);
        let shard = registry.entry(name.to_owned()).or_default();
        MemoryStore {
            shard: Arc::clone(shard),
            registry: Arc::clone(&self.registry),
        }
    }

    /// How many keys the store remembers (live, expired-but-unswept, or
    /// with waiters). For tests of memory bounds.
    pub fn tracked_keys(&self) -> usize {
        lock(&self.shard.state).slots.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shard.state)
    }
}

/// A poisoned mutex only means another thread panicked while holding it; every
/// update here is a single assignment, so the state is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    fn tick(&mut self, now: Instant) {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep >= SWEEP_EVERY {
            self.ops_since_sweep = 0;
            self.slots.retain(|_, slot| !slot.is_idle(now));
            self.semaphores.sweep(now);
        }
    }
}

#[async_trait]
impl LockStore for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        let now = Instant::now();
        let expires_at = now + request.ttl.as_duration();
        let mut state = self.state();
        state.tick(now);
        let next_fence = state.last_fence + 1;
        let slot = state.slots.entry(request.key.clone()).or_default();
        if let Some(held) = slot.lease.as_mut().filter(|held| held.is_live(now)) {
            if held.id != request.lease_id {
                return Ok(AcquireOutcome::Held(held.report(now)));
            }
            // The same lease asking again (a retried request, or an
            // election's proclamation): refresh it, with the request's label.
            held.expires_at = expires_at;
            held.owner = request.owner.clone();
            return Ok(AcquireOutcome::Acquired { fence: held.fence });
        }
        let fence = FencingToken::new(next_fence);
        slot.lease = Some(Held {
            id: request.lease_id,
            fence,
            owner: request.owner.clone(),
            expires_at,
        });
        state.last_fence = next_fence;
        Ok(AcquireOutcome::Acquired { fence })
    }

    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let held = state
            .slots
            .get_mut(key)
            .and_then(|slot| slot.lease.as_mut())
            .filter(|held| held.id == lease_id && held.is_live(now));
        Ok(match held {
            Some(held) => {
                held.expires_at = now + ttl.as_duration();
                RenewOutcome::Renewed
            }
            None => RenewOutcome::Lost,
        })
    }

    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        state.tick(now);
        let Some(slot) = state.slots.get_mut(key) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        if slot.live_lease(now).is_none_or(|held| held.id != lease_id) {
            return Ok(ReleaseOutcome::NotHeld);
        }
        slot.lease = None;
        if let Some(released) = &slot.released {
            released.send_replace(());
        }
        if !slot.has_waiters() {
            state.slots.remove(key);
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        let now = Instant::now();
        let state = self.state();
        Ok(state
            .slots
            .get(key)
            .and_then(|slot| slot.live_lease(now))
            .map(|held| held.report(now)))
    }

    fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let mut state = self.state();
        let slot = state.slots.entry(key.clone()).or_default();
        let mut released = slot
            .released
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Some(ReleaseSignal::new(async move {
            // An error means the slot was dropped with its sender, which only
            // happens once nobody waits: waking early is harmless either way.
            let _ = released.changed().await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(key: &str, ttl_ms: u64) -> AcquireRequest {
        AcquireRequest {
            key: LockKey::new(key).unwrap(),
            lease_id: LeaseId::random(),
            ttl: Ttl::from_millis(ttl_ms).unwrap(),
            owner: OwnerLabel::new("test").unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_unreleased_keys_are_swept() {
        let store = MemoryStore::new();
        for i in 0..1000 {
            store
                .try_acquire(&request(&format!("k{i}"), 10))
                .await
                .unwrap();
        }
        assert_eq!(store.tracked_keys(), 1000);
        tokio::time::advance(Duration::from_millis(20)).await;
        for _ in 0..SWEEP_EVERY {
            let req = request("busy", 1000);
            store.try_acquire(&req).await.unwrap();
            store.release(&req.key, req.lease_id).await.unwrap();
        }
        assert!(
            store.tracked_keys() <= 1,
            "{} keys left",
            store.tracked_keys()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn released_keys_are_forgotten_but_fences_keep_rising() {
        let store = MemoryStore::new();
        let mut last = 0;
        for _ in 0..5 {
            let req = request("k", 1000);
            let AcquireOutcome::Acquired { fence } = store.try_acquire(&req).await.unwrap() else {
                panic!("free key refused");
            };
            assert!(fence.get() > last);
            last = fence.get();
            store.release(&req.key, req.lease_id).await.unwrap();
            assert_eq!(store.tracked_keys(), 0);
        }
    }
}
