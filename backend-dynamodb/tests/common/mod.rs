//! Test support shared by this crate's test files: the emulator's URL, the
//! shared test table, and stores on it.

#![allow(dead_code)]

pub mod counting;

use std::time::Duration;

use lockstore_conformance::provision::{Service, server_url};
use lockstore_dynamodb::{DynamoDbStore, DynamoDbStoreBuilder};
use tokio::sync::OnceCell;

/// One table for every test of a run; tests are isolated by key prefix.
pub const TABLE: &str = "lockstore_test";

/// The clock-skew allowance in tests: every client runs on this machine's
/// one clock, so only the emulator's latency is left to cover.
pub const ALLOWANCE: Duration = Duration::from_millis(20);

/// The emulator's URL, from `LOCKSTORE_TEST_DYNAMODB_URL` (panics with
/// instructions when there is none).
pub fn url() -> String {
    server_url(Service::DynamoDb)
}

/// A builder pointed at the emulator with dummy credentials.
pub fn builder(table: &str) -> DynamoDbStoreBuilder {
    DynamoDbStore::builder(table)
        .endpoint_url(url())
        .region("us-east-1")
        .static_credentials("test", "test")
        .clock_skew_allowance(ALLOWANCE)
}

/// An SDK client for the emulator, for tests that need their own requests or
/// an interceptor.
pub fn sdk_config_builder() -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(url())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
}

/// Creates [`TABLE`] once per test binary (and is a no-op when an earlier
/// run already made it).
pub async fn ensure_table() {
    static CREATED: OnceCell<()> = OnceCell::const_new();
    CREATED
        .get_or_init(|| async {
            let store = builder(TABLE).build().await.expect("a store");
            store.create_table().await.expect("the test table");
        })
        .await;
}

/// A store on the shared table, isolated by `prefix`.
pub async fn store(prefix: &str) -> DynamoDbStore {
    ensure_table().await;
    builder(TABLE)
        .key_prefix(format!("{prefix}/"))
        .build()
        .await
        .expect("a store")
}

/// A fresh random prefix.
pub fn fresh_prefix(name: &str) -> String {
    format!("{name}-{:016x}", rand::random::<u64>())
}
