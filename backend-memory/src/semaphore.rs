//! Semaphores in memory: the permits of a key beside its lock, each
//! operation one critical section under the namespace's mutex. Fences come
//! from the namespace's one counter, shared with locks and runs, so they
//! rise per key even after an idle key is forgotten.

use std::collections::HashMap;

use async_trait::async_trait;
use lockstore_api::semaphore::{PermitOutcome, PermitRequest, Permits, SemaphoreStore};
use lockstore_api::{
    FencingToken, LeaseId, LockError, LockKey, ReleaseOutcome, ReleaseSignal, RenewOutcome, Ttl,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Held, MemoryStore};

/// The semaphores of one namespace.
#[derive(Debug, Default)]
pub(crate) struct Semaphores {
    keys: HashMap<LockKey, Sem>,
}

#[derive(Debug, Default)]
struct Sem {
    limit: u32,
    permits: Vec<Held>,
    released: Option<watch::Sender<()>>,
}

impl Sem {
    fn drop_expired(&mut self, now: Instant) {
        self.permits.retain(|held| held.is_live(now));
    }

    /// The live permits only: an inspection does not drop expired ones
    /// (it changes nothing), so it must skip them.
    fn report(&self, now: Instant) -> Permits {
        Permits::new(
            self.limit,
            self.permits
                .iter()
                .filter(|held| held.is_live(now))
                .map(|held| held.report(now))
                .collect(),
        )
    }

    fn is_idle(&self, now: Instant) -> bool {
        !self.permits.iter().any(|held| held.is_live(now))
            && self
                .released
                .as_ref()
                .is_none_or(|tx| tx.receiver_count() == 0)
    }
}

impl Semaphores {
    /// Forgets keys with no live permit and no waiter: memory stays bounded
    /// by the live keys.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.keys.retain(|_, sem| !sem.is_idle(now));
    }
}

#[async_trait]
impl SemaphoreStore for MemoryStore {
    fn semaphore_backend_name(&self) -> &'static str {
        "memory"
    }

    async fn try_acquire_permit(
        &self,
        request: &PermitRequest,
    ) -> Result<PermitOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        state.tick(now);
        let next_fence = state.last_fence + 1;
        let sem = state
            .semaphores
            .keys
            .entry(request.key.clone())
            .or_default();
        sem.drop_expired(now);
        let limit = request.limit.get();
        if sem.permits.is_empty() {
            sem.limit = limit;
        } else if sem.limit != limit {
            return Err(LockError::LimitMismatch {
                key: request.key.clone(),
                requested: limit,
                stored: sem.limit,
            });
        }
        let expires_at = now + request.ttl.as_duration();
        if let Some(own) = sem
            .permits
            .iter_mut()
            .find(|held| held.id == request.permit_id)
        {
            // The same permit asking again (a retried request): refresh it.
            own.expires_at = expires_at;
            return Ok(PermitOutcome::Granted { fence: own.fence });
        }
        if sem.permits.len() >= limit as usize {
            return Ok(PermitOutcome::Refused(sem.report(now)));
        }
        let fence = FencingToken::new(next_fence);
        sem.permits.push(Held {
            id: request.permit_id,
            fence,
            owner: request.owner.clone(),
            expires_at,
        });
        state.last_fence = next_fence;
        Ok(PermitOutcome::Granted { fence })
    }

    async fn renew_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        let held = state
            .semaphores
            .keys
            .get_mut(key)
            .and_then(|sem| sem.permits.iter_mut().find(|held| held.id == permit_id))
            .filter(|held| held.is_live(now));
        Ok(match held {
            Some(held) => {
                held.expires_at = now + ttl.as_duration();
                RenewOutcome::Renewed
            }
            None => RenewOutcome::Lost,
        })
    }

    async fn release_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
    ) -> Result<ReleaseOutcome, LockError> {
        let now = Instant::now();
        let mut state = self.state();
        state.tick(now);
        let Some(sem) = state.semaphores.keys.get_mut(key) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        sem.drop_expired(now);
        let before = sem.permits.len();
        sem.permits.retain(|held| held.id != permit_id);
        if sem.permits.len() == before {
            return Ok(ReleaseOutcome::NotHeld);
        }
        if let Some(released) = &sem.released {
            released.send_replace(());
        }
        if sem.is_idle(now) {
            state.semaphores.keys.remove(key);
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect_permits(&self, key: &LockKey) -> Result<Option<Permits>, LockError> {
        let now = Instant::now();
        let state = self.state();
        Ok(state
            .semaphores
            .keys
            .get(key)
            .map(|sem| sem.report(now))
            .filter(|permits| !permits.holders.is_empty()))
    }

    fn permit_release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let mut state = self.state();
        let sem = state.semaphores.keys.entry(key.clone()).or_default();
        let mut released = sem
            .released
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Some(ReleaseSignal::new(async move {
            // An error means the key was forgotten with its sender, which
            // only happens once nobody waits: waking early is harmless.
            let _ = released.changed().await;
        }))
    }
}
