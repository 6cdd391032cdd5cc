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
//!   and racing conditional writes on three keys.
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

use std::sync::Arc;

use common::Server;
use lockstore_api::LockStore;
use lockstore_conformance::{Harness, Profile};
use lockstore_dynamodb::TakeoverMode;

struct DynamoDbHarness(Server, TakeoverMode);

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
