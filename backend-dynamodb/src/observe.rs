//! Skew-free takeover ([`TakeoverMode::SkewFree`](crate::TakeoverMode)):
//! remembering which record version of a foreign lease this client first saw
//! when, on its own monotonic clock.
//!
//! A holder rewrites `record_version` on every acquire and renew. If this
//! client has seen one version unchanged for the lease's whole TTL, the
//! holder has not renewed within its TTL *by any clock running at about the
//! same rate as ours*, so its lease is over, whatever wall clocks say. The
//! takeover write is then conditional on that very version, so a renewal
//! that lands in between wins.
//!
//! The first sighting is stamped when the reply that showed it *arrived*:
//! the holder wrote that version before then, so its own deadline (its send
//! time + TTL) is no later than ours (our arrival + TTL).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One foreign lease version and when this client first saw it.
#[derive(Clone, Debug)]
struct Sighting {
    version: String,
    first_seen: Instant,
    ttl: Duration,
}

/// Bounded memory of sightings, by full partition-key value.
#[derive(Debug)]
pub(crate) struct Observations {
    sightings: Mutex<HashMap<String, Sighting>>,
    max: usize,
}

/// What this client may do about a foreign lease it has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not watched long enough: wait this long more.
    Wait(Duration),
    /// Unchanged for a full TTL: a takeover conditional on this version may
    /// be tried.
    TakeOver(String),
}

impl Observations {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            sightings: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sighting>> {
        // Every update is a single insert or remove: a panic elsewhere cannot
        // leave the map half-written.
        self.sightings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The version this client may take `key` over from, if any.
    pub(crate) fn takeover_version(&self, key: &str, now: Instant) -> Option<String> {
        match self.lock().get(key) {
            Some(s) if now.saturating_duration_since(s.first_seen) >= s.ttl => {
                Some(s.version.clone())
            }
            _ => None,
        }
    }

    /// Records that `version` of a lease with `ttl` was seen on `key` at
    /// `now` (keeping an earlier sighting of the same version), and says what
    /// may be done about it.
    pub(crate) fn saw(&self, key: &str, version: &str, ttl: Duration, now: Instant) -> Verdict {
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= self.max {
            // Forget what is stale first; if that is not enough, forget all.
            // Losing a sighting only makes a takeover wait a full TTL again.
            map.retain(|_, s| now.saturating_duration_since(s.first_seen) < s.ttl * 2);
            if map.len() >= self.max {
                map.clear();
            }
        }
        let sighting = map
            .entry(key.to_owned())
            .and_modify(|s| {
                if s.version != version {
                    *s = Sighting {
                        version: version.to_owned(),
                        first_seen: now,
                        ttl,
                    };
                }
            })
            .or_insert_with(|| Sighting {
                version: version.to_owned(),
                first_seen: now,
                ttl,
            });
        let watched = now.saturating_duration_since(sighting.first_seen);
        if watched >= sighting.ttl {
            Verdict::TakeOver(sighting.version.clone())
        } else {
            Verdict::Wait(sighting.ttl - watched)
        }
    }

    /// Forgets `key`, after this client wrote it.
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// How many sightings are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_only_after_a_full_ttl_of_the_same_version() {
        let o = Observations::new(10);
        let t0 = Instant::now();
        let ttl = Duration::from_millis(100);
        assert_eq!(o.saw("k", "v1", ttl, t0), Verdict::Wait(ttl));
        assert_eq!(o.takeover_version("k", t0 + ttl / 2), None);
        let later = t0 + Duration::from_millis(60);
        assert_eq!(
            o.saw("k", "v1", ttl, later),
            Verdict::Wait(Duration::from_millis(40))
        );
        // A renewal (new version) restarts the wait.
        assert_eq!(o.saw("k", "v2", ttl, later), Verdict::Wait(ttl));
        assert_eq!(o.takeover_version("k", later + ttl), Some("v2".to_owned()));
        o.forget("k");
        assert_eq!(o.takeover_version("k", later + ttl), None);
    }

    #[test]
    fn memory_is_bounded() {
        let o = Observations::new(3);
        let t0 = Instant::now();
        for i in 0..100 {
            o.saw(&format!("k{i}"), "v", Duration::from_secs(1), t0);
        }
        assert!(o.len() <= 3);
    }
}
