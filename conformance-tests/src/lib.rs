//! The one conformance suite every lockstore backend runs.
//!
//! Each case is a `pub async fn` taking a [`Ctx`]; it checks one promise of
//! the lock contract (`CONTRACT.md` at the project root) against a real store. A backend
//! joins with a [`Harness`] — a factory of isolated stores plus a
//! [`Profile`] that states its capabilities and timing explicitly — and one
//! macro line that expands every case into a named `#[test]`:
//!
//! ```text
//! // backend-redis/tests/conformance.rs
//! lockstore_conformance::suite!(redis, RedisHarness::from_env());
//! ```
//!
//! `cargo test` then lists `redis::fence_increases_after_expiry_takeover`
//! and the rest. Differences between backends are arguments in the
//! [`Profile`], never silent skips.

#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::ledger::{Ledger, LedgerStore};
use lockstore_api::{LockClient, LockStore};

pub mod cases;
pub mod concurrency;
pub mod fault;
pub mod ledger;
pub mod linearizability;
pub mod model;
pub mod provision;
pub mod proxy;

/// How a backend joins the suite.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// What the suite may expect of the backend.
    fn profile(&self) -> Profile;

    /// A store in `namespace` (lowercase ASCII letters, digits and `_`, at
    /// most 24 characters). Stores of the same namespace share locks; stores
    /// of different namespaces must not see each other's. Every test case
    /// uses fresh random namespaces, so runs never meet.
    ///
    /// Called inside the test's own tokio runtime.
    async fn store(&self, namespace: &str) -> Arc<dyn LockStore>;

    /// The execution ledger of `namespace`, for backends that implement
    /// [`LedgerStore`]; same isolation rules as [`Harness::store`]. The
    /// default, `None`, is for backends without a ledger: they must not use
    /// [`ledger_suite!`], whose cases fail loudly on `None`.
    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        let _ = namespace;
        None
    }
}

/// Which clock a backend's expiry follows, which decides the test runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `tokio::time`: cases run on a paused runtime and sleeps are instant.
    Tokio,
    /// A real clock (the server's): cases really sleep, so TTLs are short.
    Real,
}

/// What the suite may expect of a backend. Every field is a documented
/// difference, not a skip.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Whose clock judges expiry.
    pub clock: Clock,
    /// The TTL of leases meant to expire during a case.
    pub short_ttl: Duration,
    /// How far either side of an expiry boundary an outcome may go either
    /// way: clock granularity, network latency, a clock-skew allowance.
    pub tolerance: Duration,
    /// Whether `release_signal` wakes waiters (else they poll).
    pub release_notifications: bool,
    /// Cases in one run of the proptest model test.
    pub model_cases: u32,
    /// Successful acquisitions in the concurrent safety test.
    pub concurrent_acquisitions: u64,
    /// Whether a store takes an expired lease over only after it has itself
    /// watched that lease, unchanged, for a full TTL (DynamoDB's skew-free
    /// mode, which trusts no wall clock): until then a refusal is correct.
    /// Cases that expect a takeover just after expiry then look at the
    /// lease first ([`Ctx::watch_lease`]), and the model test counts a
    /// lease's expiry for a takeover from the store's first sighting.
    pub takeover_needs_watching: bool,
}

impl Profile {
    /// The profile of a backend with a real server clock: 400 ms leases,
    /// 150 ms tolerance, notifications, 32 model cases, 100,000 concurrent
    /// acquisitions. Adjust fields as needed.
    pub fn real_server() -> Self {
        Self {
            clock: Clock::Real,
            short_ttl: Duration::from_millis(400),
            tolerance: Duration::from_millis(150),
            release_notifications: true,
            model_cases: 32,
            concurrent_acquisitions: 100_000,
            takeover_needs_watching: false,
        }
    }
}

/// What a case gets: the harness, its profile, and a fresh namespace.
#[derive(Clone)]
pub struct Ctx {
    harness: Arc<dyn Harness>,
    profile: Profile,
    namespace: String,
}

impl Ctx {
    /// The backend's profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// A store in this case's namespace.
    pub async fn store(&self) -> Arc<dyn LockStore> {
        self.harness.store(&self.namespace).await
    }

    /// A store in another fresh namespace.
    pub async fn other_namespace(&self) -> Arc<dyn LockStore> {
        self.harness.store(&fresh_namespace()).await
    }

    /// The ledger of this case's namespace.
    ///
    /// # Panics
    /// When the harness has no ledger ([`Harness::ledger`] returned `None`):
    /// a backend wired into [`ledger_suite!`] must provide one.
    pub async fn ledger(&self) -> Arc<dyn LedgerStore> {
        self.harness.ledger(&self.namespace).await.expect(
            "this backend is in ledger_suite! but its Harness::ledger returns None: implement it",
        )
    }

    /// The ledger of another fresh namespace.
    pub async fn other_ledger(&self) -> Arc<dyn LedgerStore> {
        self.harness
            .ledger(&fresh_namespace())
            .await
            .expect("this backend is in ledger_suite! but its Harness::ledger returns None")
    }

    /// A ledger client over this case's namespace.
    pub async fn ledger_client(&self) -> Ledger {
        Ledger::from_arc(self.ledger().await)
    }

    /// A client over a store in this case's namespace.
    pub async fn client(&self) -> LockClient {
        LockClient::from_arc(self.store().await)
    }

    /// Lets `duration` pass on the backend's clock (instant on a paused
    /// runtime).
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Lets `duration` pass **without yielding** to the runtime, as a process
    /// stopped by `SIGSTOP` or a runtime starved by CPU-bound work sees it:
    /// no other task runs on this thread meanwhile. On a paused clock the
    /// clock jumps; on a real clock the thread blocks.
    pub fn stall(&self, duration: Duration) {
        match self.profile.clock {
            // `advance` moves the clock, then yields: poll it once to keep
            // only the move.
            Clock::Tokio => {
                let _ = futures::FutureExt::now_or_never(tokio::time::advance(duration));
            }
            Clock::Real => std::thread::sleep(duration),
        }
    }

    /// When the profile says [`takeover_needs_watching`](Profile), has
    /// `store` look at `key` now, so its watch of the current lease starts;
    /// otherwise does nothing, so other backends are tested taking over a
    /// lease they never looked at.
    pub async fn watch_lease(&self, store: &dyn LockStore, key: &lockstore_api::LockKey) {
        if self.profile.takeover_needs_watching {
            store
                .inspect(key)
                .await
                .expect("inspect to start watching the lease");
        }
    }

    /// Sleeps until a lease of `short_ttl` granted now is certainly expired.
    pub async fn sleep_past_short_ttl(&self) {
        self.sleep(self.profile.short_ttl + self.profile.tolerance)
            .await;
    }
}

fn fresh_namespace() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// Which runtime a case needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The profile's default: paused current-thread for [`Clock::Tokio`],
    /// multi-thread for [`Clock::Real`].
    Default,
    /// Real time on several worker threads, for true parallelism.
    MultiThread,
}

/// A boxed case future.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Runs one case against a harness on the runtime it needs. Used by
/// [`suite!`]; call it directly for a backend-specific test that wants the
/// same setup.
pub fn run_case<H: Harness>(harness: H, runtime: Runtime, case: fn(Ctx) -> CaseFuture) {
    init_tracing();
    let harness: Arc<dyn Harness> = Arc::new(harness);
    let profile = harness.profile();
    let mut builder = match (runtime, profile.clock) {
        (Runtime::Default, Clock::Tokio) => {
            let mut b = tokio::runtime::Builder::new_current_thread();
            b.start_paused(true);
            b
        }
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = builder.enable_all().build().expect("a tokio runtime");
    let ctx = Ctx {
        harness,
        profile,
        namespace: fresh_namespace(),
    };
    rt.block_on(case(ctx));
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Expands every ledger conformance case (the run-once contract) into a
/// `#[test]` in a module named `$backend`, like [`suite!`] does for locks.
/// A backend that implements `LedgerStore` adds this line beside `suite!`:
///
/// ```text
/// lockstore_conformance::ledger_suite!(redis_ledger, RedisHarness::from_env());
/// ```
#[macro_export]
macro_rules! ledger_suite {
    ($backend:ident, $harness:expr) => {
        $crate::__ledger_cases!($backend, $harness);
    };
}

/// Expands every conformance case into a `#[test]` in a module named
/// `$backend`, each calling [`run_case`] with a fresh harness from
/// `$harness` (an expression evaluated once per test).
#[macro_export]
macro_rules! suite {
    ($backend:ident, $harness:expr) => {
        $crate::__cases!($backend, $harness);
    };
}
