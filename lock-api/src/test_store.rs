//! A store for the client layer's own tests: grants free keys, never expires
//! them, and misbehaves on renewal as a test asks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AcquireOutcome, AcquireRequest, FencingToken, Holder, LeaseId, LockError, LockKey, LockStore,
    ReleaseOutcome, RenewOutcome, Ttl,
};

/// What a renewal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenewBehaviour {
    /// Renews.
    Renew,
    /// Fails (retryable) this many times, then renews.
    FailFirst(u32),
    /// Panics, as a buggy third-party store might.
    Panic,
}

#[derive(Debug)]
pub(crate) struct TestStore {
    held: Mutex<HashMap<LockKey, (LeaseId, FencingToken)>>,
    next_fence: AtomicU64,
    renew: RenewBehaviour,
    renew_failures: AtomicU32,
    pub(crate) acquires: AtomicU64,
    pub(crate) releases: AtomicU64,
    /// Every renewal asked for: when it arrived, and for how long.
    pub(crate) renewals: Mutex<Vec<(tokio::time::Instant, Ttl)>>,
}

impl TestStore {
    pub(crate) fn new(renew: RenewBehaviour) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            next_fence: AtomicU64::new(1),
            renew,
            renew_failures: AtomicU32::new(0),
            acquires: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            renewals: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl LockStore for TestStore {
    fn backend_name(&self) -> &'static str {
        "test"
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap();
        match held.get(&request.key) {
            Some((id, fence)) if *id == request.lease_id => {
                Ok(AcquireOutcome::Acquired { fence: *fence })
            }
            Some((_, fence)) => Ok(AcquireOutcome::Held(Holder::new(
                "someone",
                *fence,
                Duration::from_secs(60),
            ))),
            None => {
                let fence = FencingToken::new(self.next_fence.fetch_add(1, Ordering::SeqCst));
                held.insert(request.key.clone(), (request.lease_id, fence));
                Ok(AcquireOutcome::Acquired { fence })
            }
        }
    }

    async fn renew(&self, key: &LockKey, id: LeaseId, ttl: Ttl) -> Result<RenewOutcome, LockError> {
        self.renewals
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), ttl));
        match self.renew {
            RenewBehaviour::Renew => {}
            RenewBehaviour::FailFirst(n) => {
                if self.renew_failures.fetch_add(1, Ordering::SeqCst) < n {
                    return Err(LockError::Backend {
                        backend: "test",
                        retryable: true,
                        message: "renewal blip".into(),
                        source: None,
                    });
                }
            }
            RenewBehaviour::Panic => panic!("the test store panics on renewal"),
        }
        let held = self.held.lock().unwrap();
        Ok(match held.get(key) {
            Some((holder, _)) if *holder == id => RenewOutcome::Renewed,
            _ => RenewOutcome::Lost,
        })
    }

    async fn release(&self, key: &LockKey, id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap();
        match held.get(key) {
            Some((holder, _)) if *holder == id => {
                held.remove(key);
                Ok(ReleaseOutcome::Released)
            }
            _ => Ok(ReleaseOutcome::NotHeld),
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        let held = self.held.lock().unwrap();
        Ok(held
            .get(key)
            .map(|(_, fence)| Holder::new("someone", *fence, Duration::from_secs(60))))
    }
}

/// Moves the paused clock forward by `by` **without yielding**: no other
/// task runs, as in a process stopped by SIGSTOP or a runtime starved by
/// CPU-bound work. (`tokio::time::advance` yields after moving the clock;
/// polling it once keeps only the move.)
pub(crate) fn stall(by: Duration) {
    let _ = poll_once(tokio::time::advance(by));
}

/// Polls `future` once with a waker that does nothing.
pub(crate) fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let future = pin!(future);
    future.poll(&mut Context::from_waker(Waker::noop()))
}
