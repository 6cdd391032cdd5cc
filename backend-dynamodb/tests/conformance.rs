//! The shared conformance suite against two independent DynamoDB-compatible
//! servers: moto (or DynamoDB Local, from `LOCKSTORE_TEST_DYNAMODB_URL`),
//! as `dynamodb::…`, and dynalite (from `LOCKSTORE_TEST_DYNALITE_URL`), as
//! `dynalite::…`. Each server has its own table; each namespace is a key
//! prefix. dynalite lacks TTL operations and does not return the old item
//! on a refused condition (see `COMPATIBILITY.md`); the suite must pass
//! unchanged regardless.
//!
//! Profile differences from `Profile::real_server()`, each for a reason:
//! * `release_notifications: false` — DynamoDB has no notifications, waiters
//!   poll with backoff;
//! * `tolerance` keeps 150 ms, which covers the 20 ms clock-skew allowance
//!   the stores here use (added before any takeover) and emulator latency;
//! * `concurrent_acquisitions: 5_000` instead of 100,000 — the emulator
//!   (moto, a single-threaded Python server so that its writes are atomic)
//!   serves a few hundred requests a second, and 100,000 acquisitions would
//!   take the best part of an hour (10,000 took 6.5 min on a busy 2-core
//!   machine, and passed); 5,000 still drive thousands of refused
//!   and racing conditional writes on three keys;
//! * `restart: LosesTable` — the emulators keep everything in memory; the
//!   restart case starts one of its own and re-creates the table after it;
//! * `client_clock: PerClient` — DynamoDB has no clock: each client's wall
//!   clock judges expiry. The clock-skew cases get stores with a clock set
//!   apart ([`OffsetClock`]) and a 300 ms allowance, well above the guard's
//!   40 ms margin, so that "within the allowance" means something.
//!
//! The semaphore suite runs on both servers too (`dynamodb_semaphore::…`,
//! `dynalite_semaphore::…`), with the same profile, in wall-clock mode
//! only: a skew-free store has no semaphores (it refuses them with a config
//! error, tested in `semaphore.rs`).
//!
//! Both servers also run the suite in [`TakeoverMode::SkewFree`]
//! (`dynamodb_skew_free::…`, `dynalite_skew_free::…`). A skew-free store
//! takes an expired lease over only after watching its record version for
//! a full TTL, so that profile says `takeover_needs_watching`: the cases
//! that expect a takeover just after expiry look at the lease first, and
//! the model test counts expiry for a takeover from the first sighting.
//! Its concurrent test makes 2,000 acquisitions (the same conditional
//! writes as wall-clock mode's but for the takeover condition), to keep the
//! two extra suites within a few minutes on the emulators.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Server;
use lockstore_api::LockStore;
use lockstore_api::semaphore::SemaphoreStore;
use lockstore_conformance::proxy::url_host_port;
use lockstore_conformance::servers::{Emulator, EmulatorServer, PrivateServer};
use lockstore_conformance::{ClientClock, ClockSetting, Harness, Profile, Restart};
use lockstore_dynamodb::{DynamoDbStore, TakeoverMode, WallClock};

struct DynamoDbHarness(Server, TakeoverMode);

/// The allowance of the clock-skew cases' stores.
const SKEW_ALLOWANCE: Duration = Duration::from_millis(300);

impl DynamoDbHarness {
    /// The store of `Harness::store_at` and `Harness::semaphore_at`.
    async fn store_at_addr(&self, namespace: &str, addr: SocketAddr) -> DynamoDbStore {
        // The table exists on the shared server (a proxy in front of it);
        // a private emulator's table is its `provision`'s to make. These
        // stores serve the fault cases, which take over right after a
        // fault: they stay in wall-clock mode in the skew-free suites too
        // (a skew-free takeover must first watch the lease for a TTL, which
        // those cases do not do), so there the fault cases run twice.
        if Some(addr.to_string()) != self.server_addr() {
            common::ensure_table_on(self.0).await;
        }
        common::builder_on(self.0, &self.0.table(common::TABLE))
            .endpoint_url(format!("http://{addr}"))
            .key_prefix(format!("{namespace}/"))
            .operation_timeout(Some(REQUEST_TIMEOUT))
            .build()
            .await
            .expect("a store")
    }
}

/// What one call of a store from `store_at` may take, SDK retries included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait::async_trait]
impl Harness for DynamoDbHarness {
    fn profile(&self) -> Profile {
        Profile {
            release_notifications: false,
            concurrent_acquisitions: match self.1 {
                TakeoverMode::WallClock => 5_000,
                TakeoverMode::SkewFree => 2_000,
            },
            takeover_needs_watching: self.1 == TakeoverMode::SkewFree,
            request_timeout: Some(REQUEST_TIMEOUT),
            restart: Restart::LosesTable,
            client_clock: ClientClock::PerClient {
                skew_allowance: SKEW_ALLOWANCE,
                skew_free_mode: true,
            },
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        common::ensure_table_on(self.0).await;
        let store = common::builder_on(self.0, &self.0.table(common::TABLE))
            .key_prefix(format!("{namespace}/"))
            .takeover(self.1)
            .build()
            .await
            .expect("a store");
        Arc::new(store)
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        // Semaphores need wall-clock mode (a skew-free store refuses them),
        // so the skew-free harnesses are not in the semaphore suite.
        if self.1 != TakeoverMode::WallClock {
            return None;
        }
        common::ensure_table_on(self.0).await;
        let store = common::builder_on(self.0, &self.0.table(common::TABLE))
            .key_prefix(format!("{namespace}/"))
            .build()
            .await
            .expect("a store");
        Some(Arc::new(store))
    }

    fn server_addr(&self) -> Option<String> {
        url_host_port(&self.0.url())
    }

    async fn store_at(&self, namespace: &str, addr: SocketAddr) -> Option<Arc<dyn LockStore>> {
        Some(Arc::new(self.store_at_addr(namespace, addr).await))
    }

    async fn semaphore_at(
        &self,
        namespace: &str,
        addr: SocketAddr,
    ) -> Option<Arc<dyn SemaphoreStore>> {
        // As `semaphore`: skew-free harnesses are not in the semaphore suite.
        if self.1 != TakeoverMode::WallClock {
            return None;
        }
        Some(Arc::new(self.store_at_addr(namespace, addr).await))
    }

    async fn private_server(&self) -> Option<Box<dyn PrivateServer>> {
        let emulator = match self.0 {
            Server::Moto => Emulator::Moto,
            Server::Dynalite => Emulator::Dynalite,
        };
        Some(Box::new(PrivateEmulator {
            server: self.0,
            process: EmulatorServer::start_new(emulator).await,
        }))
    }

    async fn store_with_clock(
        &self,
        namespace: &str,
        clock: ClockSetting,
    ) -> Option<Arc<dyn LockStore>> {
        common::ensure_table_on(self.0).await;
        let store = common::builder_on(self.0, &self.0.table(common::TABLE))
            .key_prefix(format!("{namespace}/"))
            .clock_skew_allowance(SKEW_ALLOWANCE)
            .takeover(if clock.skew_free {
                TakeoverMode::SkewFree
            } else {
                TakeoverMode::WallClock
            })
            .wall_clock(OffsetClock(clock.offset_ms))
            .build()
            .await
            .expect("a store");
        Some(Arc::new(store))
    }
}

/// A wall clock this many milliseconds ahead of the host's (behind when
/// negative): a client with a skewed clock.
#[derive(Debug)]
struct OffsetClock(i64);

impl WallClock for OffsetClock {
    fn now(&self) -> SystemTime {
        let offset = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            SystemTime::now() + offset
        } else {
            SystemTime::now() - offset
        }
    }
}

/// An emulator of the case's own; provisioning creates the lock table, as
/// an operator would after the emulator lost it.
struct PrivateEmulator {
    server: Server,
    process: EmulatorServer,
}

#[async_trait::async_trait]
impl PrivateServer for PrivateEmulator {
    fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    async fn stop(&mut self) {
        self.process.stop().await;
    }

    async fn start(&mut self) {
        self.process.start().await;
    }

    async fn provision(&mut self) {
        let store: DynamoDbStore =
            common::builder_on(self.server, &self.server.table(common::TABLE))
                .endpoint_url(format!("http://{}", self.process.addr()))
                .build()
                .await
                .expect("a store");
        store
            .create_table()
            .await
            .expect("create the table on the private emulator");
    }
}

lockstore_conformance::suite!(
    dynamodb,
    DynamoDbHarness(Server::Moto, TakeoverMode::WallClock)
);
lockstore_conformance::suite!(
    dynalite,
    DynamoDbHarness(Server::Dynalite, TakeoverMode::WallClock)
);
lockstore_conformance::suite!(
    dynamodb_skew_free,
    DynamoDbHarness(Server::Moto, TakeoverMode::SkewFree)
);
lockstore_conformance::suite!(
    dynalite_skew_free,
    DynamoDbHarness(Server::Dynalite, TakeoverMode::SkewFree)
);
lockstore_conformance::semaphore_suite!(
    dynamodb_semaphore,
    DynamoDbHarness(Server::Moto, TakeoverMode::WallClock)
);
lockstore_conformance::semaphore_suite!(
    dynalite_semaphore,
    DynamoDbHarness(Server::Dynalite, TakeoverMode::WallClock)
);
