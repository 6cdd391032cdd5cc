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
//!
//! Fault cases break what a backend depends on, where it applies: the
//! network (a [`proxy::FaultProxy`] in front of [`Harness::server_addr`],
//! reached by [`Harness::store_at`]), the server (a
//! [`servers::PrivateServer`] restarted mid-case), the holder process (the
//! test binary re-run as a [`child`] and stopped with `SIGSTOP`) and the
//! client clock ([`Harness::store_with_clock`]). The profile states which
//! apply ([`Network`], [`Restart`], [`Processes`], [`ClientClock`]); a case
//! whose fault does not apply checks that the claim is true of the backend
//! instead of returning quietly. Each asserts against a [`fenced`] resource
//! and the guard's own deadline, never against how fast anything ran.

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::ledger::{Ledger, LedgerStore};
use lockstore_api::semaphore::{Semaphore, SemaphoreStore};
use lockstore_api::{LockClient, LockStore};

pub mod bench;
pub mod cases;
pub mod child;
pub mod concurrency;
pub mod fault;
pub mod fenced;
pub mod ledger;
pub mod linearizability;
pub mod model;
pub mod provision;
pub mod proxy;
pub mod semaphore;
pub mod servers;

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

    /// The semaphores of `namespace`, for backends that implement
    /// [`SemaphoreStore`]; same isolation rules as [`Harness::store`]. The
    /// default, `None`, is for backends without semaphores: they must not
    /// use [`semaphore_suite!`], whose cases fail loudly on `None`.
    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        let _ = namespace;
        None
    }

    /// The `host:port` of the server [`Harness::store`]'s stores talk to,
    /// for a [`FaultProxy`](proxy::FaultProxy) to stand in front of. `None`
    /// (the default) for a backend without a network ([`Network::Embedded`]).
    fn server_addr(&self) -> Option<String> {
        None
    }

    /// A store in `namespace` that talks to the server at `addr` — a fault
    /// proxy in front of [`Harness::server_addr`], or a
    /// [`PrivateServer`](servers::PrivateServer) — with everything else as
    /// [`Harness::store`] makes it, and the request timeout the profile
    /// states ([`Profile::request_timeout`]). It must not create the
    /// backend's schema or table at `addr` (a case may want to see it
    /// missing); the harness may do so on its shared server. `None` (the
    /// default) for [`Network::Embedded`].
    async fn store_at(&self, namespace: &str, addr: SocketAddr) -> Option<Arc<dyn LockStore>> {
        let _ = (namespace, addr);
        None
    }

    /// The semaphores of `namespace` on the server at `addr`, made as
    /// [`Harness::store_at`] makes its stores (same request timeout, no
    /// schema created at `addr`), for the semaphore fault-proxy cases.
    /// `None` (the default) for [`Network::Embedded`] and for backends
    /// without semaphores.
    async fn semaphore_at(
        &self,
        namespace: &str,
        addr: SocketAddr,
    ) -> Option<Arc<dyn SemaphoreStore>> {
        let _ = (namespace, addr);
        None
    }

    /// Starts a server of this backend of the case's own (a child process
    /// on a free port, from the locally installed binaries), which the case
    /// may stop and start; [`Profile::restart`] says what a restart keeps.
    /// `None` (the default) for [`Restart::NoServer`].
    async fn private_server(&self) -> Option<Box<dyn servers::PrivateServer>> {
        None
    }

    /// A store in `namespace` whose client clock is set apart from the
    /// host's as `clock` says, for backends whose expiry reads each client's
    /// own clock ([`ClientClock::PerClient`]). Every store made here uses the
    /// profile's skew allowance. `None` (the default) otherwise.
    async fn store_with_clock(
        &self,
        namespace: &str,
        clock: ClockSetting,
    ) -> Option<Arc<dyn LockStore>> {
        let _ = (namespace, clock);
        None
    }
}

/// How a backend's stores reach their data, which decides whether network
/// faults apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// Over TCP to a server: [`Harness::server_addr`] and
    /// [`Harness::store_at`] work, and the fault-proxy cases run.
    Tcp,
    /// In this process or a file on this host (memory, SQLite): there is no
    /// connection to delay, cut or reset.
    Embedded,
    /// Over TCP to a Redis Cluster, whose nodes announce their own
    /// addresses (`CLUSTER SLOTS`, `MOVED`): the client follows them past
    /// any proxy in front of the one address it was given, so the
    /// fault-proxy cases cannot stand between it and the nodes. They run on
    /// the single-server Redis suite, which sends the same scripts; here
    /// they check only that the backend is Redis.
    Cluster,
}

/// What restarting the backend's server does to its locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// There is no server process (memory, SQLite).
    NoServer,
    /// Leases and fences survive (PostgreSQL: a fast shutdown checkpoints,
    /// and committed grants are in the WAL): mutual exclusion holds across
    /// the restart.
    KeepsLeases,
    /// Every lease is lost (Redis without persistence): the next acquirer
    /// gets the key at once, possibly while a holder still trusts its lease
    /// (until its deadline); fences still rise, from the server clock.
    LosesLeases,
    /// Everything is lost, the table too (an in-memory DynamoDB emulator):
    /// requests fail with a [`LockError::Config`](lockstore_api::LockError)
    /// until an operator re-creates the table
    /// ([`PrivateServer::provision`](servers::PrivateServer::provision));
    /// fences then rise again, from the writers' wall clock.
    LosesTable,
    /// A Redis Cluster: a primary restarted without persistence loses its
    /// slots' leases as a single server does ([`Restart::LosesLeases`],
    /// checked by the single-server Redis suite); a primary replaced by a
    /// replica is the failover the contract documents. The case checks
    /// only that the backend is Redis.
    Cluster,
}

/// Whose locks a second OS process can share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processes {
    /// Any process that reaches the same server or file shares the locks.
    Shared,
    /// Locks live in one process's memory (the memory backend).
    OneProcess,
}

/// How far a client's own clock takes part in judging expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientClock {
    /// Never read: the server's clock alone judges expiry (Redis,
    /// PostgreSQL). Client clock skew cannot matter.
    NotRead,
    /// One clock every client shares, which no client can set apart from
    /// the others: the host clock read inside the SQL statement (SQLite, all
    /// processes on one host), tokio's clock in one process (memory). Skew
    /// between clients cannot exist; a step of the host clock cannot be
    /// injected without changing the machine's time (or a custom SQLite VFS).
    Shared,
    /// Each client's wall clock (DynamoDB, which has none of its own):
    /// [`Harness::store_with_clock`] sets a client's clock apart.
    PerClient {
        /// How far apart the clocks may be while a takeover still waits for
        /// the holder's deadline (the stores' configured allowance).
        skew_allowance: Duration,
        /// Whether a mode exists that does not read wall clocks to judge
        /// expiry ([`ClockSetting::skew_free`]).
        skew_free_mode: bool,
    },
}

/// A client clock for [`Harness::store_with_clock`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSetting {
    /// Milliseconds the client's wall clock reads ahead of the host's
    /// (negative: behind).
    pub offset_ms: i64,
    /// Use the backend's skew-free takeover mode.
    pub skew_free: bool,
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
    /// Whether stores talk to a server over TCP (network faults apply).
    pub network: Network,
    /// The longest a single store call made by [`Harness::store_at`] waits
    /// for an answer before failing with a retryable error, as the harness
    /// configures it; `None` when the store has no such bound of its own
    /// (PostgreSQL: a statement on a silenced connection waits for the
    /// kernel to give up; the client layer bounds every call it makes).
    pub request_timeout: Option<Duration>,
    /// What a server restart keeps.
    pub restart: Restart,
    /// Whether holders in other processes share the locks (the pause case
    /// stops a holder process with `SIGSTOP`).
    pub processes: Processes,
    /// How far clients' own clocks judge expiry (the clock-skew cases).
    pub client_clock: ClientClock,
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
    /// acquisitions; a TCP server with a 2 s request timeout whose restart
    /// keeps leases, shared between processes, judging expiry by its own
    /// clock. Adjust fields as needed: the fault cases check the network,
    /// restart, process and clock fields against what the harness and the
    /// backend really do.
    pub fn real_server() -> Self {
        Self {
            clock: Clock::Real,
            short_ttl: Duration::from_millis(400),
            tolerance: Duration::from_millis(150),
            release_notifications: true,
            model_cases: 32,
            concurrent_acquisitions: 100_000,
            network: Network::Tcp,
            request_timeout: Some(Duration::from_secs(2)),
            restart: Restart::KeepsLeases,
            processes: Processes::Shared,
            client_clock: ClientClock::NotRead,
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
    test_name: Option<String>,
    child: bool,
}

impl Ctx {
    /// The backend's profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The harness, for the capabilities a fault case needs.
    pub fn harness(&self) -> &dyn Harness {
        &*self.harness
    }

    /// This case's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The test's name as `cargo test` filters it (`redis::case`), when the
    /// case runs through [`suite!`]: a case re-runs its own test binary with
    /// it to play a second process.
    pub fn test_name(&self) -> Option<&str> {
        self.test_name.as_deref()
    }

    /// Whether this run is the child process a case started
    /// ([`child::spawn`]): it then plays the child's part, in the parent's
    /// namespace.
    pub fn is_child(&self) -> bool {
        self.child
    }

    /// A store in this case's namespace talking to `addr` (a fault proxy or
    /// a private server).
    ///
    /// # Panics
    /// When the harness cannot point a store at an address although its
    /// profile says [`Network::Tcp`].
    pub async fn store_at(&self, addr: SocketAddr) -> Arc<dyn LockStore> {
        self.harness.store_at(&self.namespace, addr).await.expect(
            "the profile says Network::Tcp, but Harness::store_at returned None: implement it",
        )
    }

    /// The semaphores of this case's namespace on the server at `addr` (a
    /// fault proxy).
    ///
    /// # Panics
    /// When the harness cannot point semaphores at an address although
    /// its profile says [`Network::Tcp`] and it is in [`semaphore_suite!`].
    pub async fn semaphore_at(&self, addr: SocketAddr) -> Arc<dyn SemaphoreStore> {
        self.harness.semaphore_at(&self.namespace, addr).await.expect(
            "the profile says Network::Tcp, but Harness::semaphore_at returned None: implement it",
        )
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

    /// The semaphores of this case's namespace.
    ///
    /// # Panics
    /// When the harness has none ([`Harness::semaphore`] returned `None`):
    /// a backend wired into [`semaphore_suite!`] must provide them.
    pub async fn semaphore(&self) -> Arc<dyn SemaphoreStore> {
        self.harness.semaphore(&self.namespace).await.expect(
            "this backend is in semaphore_suite! but its Harness::semaphore returns None: implement it",
        )
    }

    /// The semaphores of another fresh namespace.
    pub async fn other_semaphore(&self) -> Arc<dyn SemaphoreStore> {
        self.harness
            .semaphore(&fresh_namespace())
            .await
            .expect("this backend is in semaphore_suite! but its Harness::semaphore returns None")
    }

    /// A semaphore client over this case's namespace.
    pub async fn semaphore_client(&self) -> Semaphore {
        Semaphore::from_arc(self.semaphore().await)
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
    run_named_case(harness, runtime, None, case);
}

/// [`run_case`] for a test whose name (as `cargo test` filters it) is
/// known, so that the case can re-run it as a child process
/// ([`child::spawn`]). In that child the case gets the parent's namespace.
pub fn run_named_case<H: Harness>(
    harness: H,
    runtime: Runtime,
    test_name: Option<String>,
    case: fn(Ctx) -> CaseFuture,
) {
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
    let child_namespace = child::namespace();
    let ctx = Ctx {
        harness,
        profile,
        child: child_namespace.is_some(),
        namespace: child_namespace.unwrap_or_else(fresh_namespace),
        test_name,
    };
    rt.block_on(case(ctx));
}

/// The name `cargo test` knows a test by, from the `module_path!()` of
/// its function (whose first part is the test crate) and the function's
/// name. Used by [`suite!`].
#[doc(hidden)]
pub fn test_name(module_path: &str, function: &str) -> String {
    let within_crate = module_path.split_once("::").map_or("", |(_, rest)| rest);
    if within_crate.is_empty() {
        function.to_owned()
    } else {
        format!("{within_crate}::{function}")
    }
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

/// Expands every semaphore conformance case into a `#[test]` in a module
/// named `$backend`, like [`suite!`] does for locks. A backend that
/// implements `SemaphoreStore` adds this line beside `suite!`:
///
/// ```text
/// lockstore_conformance::semaphore_suite!(redis_semaphore, RedisHarness::from_env());
/// ```
#[macro_export]
macro_rules! semaphore_suite {
    ($backend:ident, $harness:expr) => {
        $crate::__semaphore_cases!($backend, $harness);
    };
}
