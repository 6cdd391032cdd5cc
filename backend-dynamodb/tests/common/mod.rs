//! Test support shared by this crate's test files: the emulators' URLs, the
//! shared test tables, and stores on them.
//!
//! Two independently written DynamoDB-compatible servers: moto (the
//! default, `LOCKSTORE_TEST_DYNAMODB_URL`) and dynalite
//! (`LOCKSTORE_TEST_DYNALITE_URL`), each with its own table names, so even
//! two URLs naming one server never share a table.

#![allow(dead_code)]

pub mod counting;

use std::time::Duration;

use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, Holder, LeaseId, LockKey, LockStore, OwnerLabel,
    Ttl,
};
use lockstore_conformance::provision::{Service, server_url};
use lockstore_dynamodb::{DynamoDbStore, DynamoDbStoreBuilder};
use tokio::sync::OnceCell;

/// One table for every test of a run; tests are isolated by key prefix.
pub const TABLE: &str = "lockstore_test";

/// The variable holding dynalite's URL (`scripts/servers.sh start` sets it).
pub const DYNALITE_URL_VAR: &str = "LOCKSTORE_TEST_DYNALITE_URL";

/// A DynamoDB-compatible server the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// moto (or DynamoDB Local), from `LOCKSTORE_TEST_DYNAMODB_URL`.
    Moto,
    /// dynalite, from [`DYNALITE_URL_VAR`]: no TTL operations, no old item
    /// on a refused condition, no index added to an existing table.
    Dynalite,
}

impl Server {
    /// The server's URL (panics with instructions when there is none).
    pub fn url(self) -> String {
        match self {
            Server::Moto => url(),
            Server::Dynalite => dynalite_url(),
        }
    }

    /// `base`, the name of a table on this server: dynalite's tables get a
    /// suffix of their own.
    pub fn table(self, base: &str) -> String {
        match self {
            Server::Moto => base.to_owned(),
            Server::Dynalite => format!("{base}_dynalite"),
        }
    }
}

/// dynalite's URL, from [`DYNALITE_URL_VAR`]. A missing URL fails the test
/// loudly, as a missing moto does: the dynalite runs are never skipped.
pub fn dynalite_url() -> String {
    match std::env::var(DYNALITE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "no dynalite server for the lockstore DynamoDB tests: set {DYNALITE_URL_VAR}=<url> \
             of a running dynalite (`eval \"$(scripts/servers.sh start)\"` installs and starts \
             one on 127.0.0.1 and sets it)"
        ),
    }
}

/// The clock-skew allowance in tests: every client runs on this machine's
/// one clock, so only the emulator's latency is left to cover.
pub const ALLOWANCE: Duration = Duration::from_millis(20);

/// The emulator's URL, from `LOCKSTORE_TEST_DYNAMODB_URL` (panics with
/// instructions when there is none).
pub fn url() -> String {
    server_url(Service::DynamoDb)
}

/// A builder pointed at the emulator (moto) with dummy credentials.
pub fn builder(table: &str) -> DynamoDbStoreBuilder {
    builder_on(Server::Moto, table)
}

/// A builder pointed at `server` with dummy credentials; `table` is used
/// as given.
pub fn builder_on(server: Server, table: &str) -> DynamoDbStoreBuilder {
    DynamoDbStore::builder(table)
        .endpoint_url(server.url())
        .region("us-east-1")
        .static_credentials("test", "test")
        .clock_skew_allowance(ALLOWANCE)
}

/// An SDK client for the emulator, for tests that need their own requests or
/// an interceptor.
pub fn sdk_config_builder() -> aws_sdk_dynamodb::config::Builder {
    sdk_config_builder_on(Server::Moto)
}

/// An SDK client builder for `server`.
pub fn sdk_config_builder_on(server: Server) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(server.url())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
}

/// Creates [`TABLE`] once per test binary (and is a no-op when an earlier
/// run already made it).
pub async fn ensure_table() {
    ensure_table_on(Server::Moto).await;
}

/// Creates `server.table(TABLE)` with `create_table` once per test binary
/// and server (a no-op when an earlier run already made it).
pub async fn ensure_table_on(server: Server) {
    static MOTO: OnceCell<()> = OnceCell::const_new();
    static DYNALITE: OnceCell<()> = OnceCell::const_new();
    let once = match server {
        Server::Moto => &MOTO,
        Server::Dynalite => &DYNALITE,
    };
    once.get_or_init(|| async {
        let store = builder_on(server, &server.table(TABLE))
            .build()
            .await
            .expect("a store");
        store.create_table().await.expect("the test table");
    })
    .await;
}

/// A store on the shared table, isolated by `prefix`.
pub async fn store(prefix: &str) -> DynamoDbStore {
    store_on(Server::Moto, prefix).await
}

/// A store on `server`'s shared lock table, isolated by `prefix`.
pub async fn store_on(server: Server, prefix: &str) -> DynamoDbStore {
    ensure_table_on(server).await;
    builder_on(server, &server.table(TABLE))
        .key_prefix(format!("{prefix}/"))
        .build()
        .await
        .expect("a store")
}

/// A fresh random prefix.
pub fn fresh_prefix(name: &str) -> String {
    format!("{name}-{:016x}", rand::random::<u64>())
}

/// A lock key; panics on an invalid name (test support).
pub fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

/// A request for `key` by a new lease of `owner`.
pub fn request(key: &LockKey, ttl: Duration, owner: &str) -> AcquireRequest {
    AcquireRequest {
        key: key.clone(),
        lease_id: LeaseId::random(),
        ttl: Ttl::new(ttl).unwrap(),
        owner: OwnerLabel::new(owner).unwrap(),
    }
}

/// The fence of a grant; panics when the key is held.
pub async fn acquired(store: &dyn LockStore, request: &AcquireRequest) -> FencingToken {
    match store.try_acquire(request).await.unwrap() {
        AcquireOutcome::Acquired { fence } => fence,
        AcquireOutcome::Held(holder) => panic!("{} refused, held by {holder:?}", request.key),
    }
}

/// The holder that refused; panics when the key is granted.
pub async fn held(store: &dyn LockStore, request: &AcquireRequest) -> Holder {
    match store.try_acquire(request).await.unwrap() {
        AcquireOutcome::Held(holder) => holder,
        AcquireOutcome::Acquired { fence } => panic!("{} granted (fence {fence})", request.key),
    }
}
