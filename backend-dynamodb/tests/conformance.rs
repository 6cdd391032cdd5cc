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

mod common;

use std::sync::Arc;

use common::Server;
use lockstore_api::LockStore;
use lockstore_conformance::{Harness, Profile};

struct DynamoDbHarness(Server);

#[async_trait::async_trait]
impl Harness for DynamoDbHarness {
    fn profile(&self) -> Profile {
        Profile {
            release_notifications: false,
            concurrent_acquisitions: 5_000,
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(common::store_on(self.0, namespace).await)
    }
}

lockstore_conformance::suite!(dynamodb, DynamoDbHarness(Server::Moto));
lockstore_conformance::suite!(dynalite, DynamoDbHarness(Server::Dynalite));
