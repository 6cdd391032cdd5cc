//! The shared conformance suite against a DynamoDB-compatible server (moto
//! or DynamoDB Local, from `LOCKSTORE_TEST_DYNAMODB_URL`).
//!
//! One table for the whole run; each namespace is a key prefix.
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

use lockstore_api::LockStore;
use lockstore_conformance::{Harness, Profile};

struct DynamoDbHarness;

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
        Arc::new(common::store(namespace).await)
    }
}

lockstore_conformance::suite!(dynamodb, DynamoDbHarness);
