//! Harnesses shared by the test files: a PostgreSQL store per namespace (its
//! own table in the `lockstore_conformance` schema) and a SQLite store per
//! namespace (its own database file under the target directory).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_api::semaphore::SemaphoreStore;
use lockstore_conformance::provision::{Service, server_url};
use lockstore_conformance::proxy::{url_host_port, url_with_addr};
use lockstore_conformance::servers::{PostgresServer, PrivateServer};
use lockstore_conformance::{ClientClock, Harness, Network, Profile, Restart};
use lockstore_sql::{PostgresStore, SqliteStore};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::OnceCell;

/// The schema every PostgreSQL test table lives in.
pub const TEST_SCHEMA: &str = "lockstore_conformance";

/// The test server's URL (`LOCKSTORE_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    server_url(Service::Postgres)
}

/// Stores on one pool per test (the harness is made once per test, inside
/// its runtime), each namespace its own table.
#[derive(Default)]
pub struct PostgresHarness {
    pool: OnceCell<PgPool>,
}

impl PostgresHarness {
    pub async fn pool(&self) -> PgPool {
        self.pool
            .get_or_init(|| async {
                PgPoolOptions::new()
                    .max_connections(12)
                    .test_before_acquire(false)
                    .connect(&postgres_url())
                    .await
                    .expect("connect to the test PostgreSQL server")
            })
            .await
            .clone()
    }

    pub async fn postgres_store(&self, namespace: &str) -> PostgresStore {
        let store = PostgresStore::builder_with_pool(self.pool().await)
            .schema(TEST_SCHEMA)
            .table(format!("locks_{namespace}"))
            .build()
            .await
            .expect("build a PostgreSQL store");
        store.ensure_schema().await.expect("ensure_schema");
        store
    }
}

#[lockstore_api::async_trait]
impl Harness for PostgresHarness {
    fn profile(&self) -> Profile {
        Profile {
            // sqlx has no read timeout: a statement on a silenced connection
            // waits until the kernel gives up on it (minutes). The client
            // layer bounds every acquire attempt, renewal and release.
            request_timeout: None,
            // A fast shutdown checkpoints; committed grants are in the WAL.
            restart: Restart::KeepsLeases,
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(self.postgres_store(namespace).await)
    }

    fn server_addr(&self) -> Option<String> {
        url_host_port(&postgres_url())
    }

    /// A store with a pool of its own at `addr` ([`postgres_store_at`]).
    async fn store_at(&self, namespace: &str, addr: SocketAddr) -> Option<Arc<dyn LockStore>> {
        Some(Arc::new(postgres_store_at(namespace, addr).await))
    }

    async fn semaphore_at(
        &self,
        namespace: &str,
        addr: SocketAddr,
    ) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(postgres_store_at(namespace, addr).await))
    }

    async fn private_server(&self) -> Option<Box<dyn PrivateServer>> {
        let url = postgres_url();
        let database = url
            .rsplit_once('/')
            .map(|(_, db)| db.split('?').next().unwrap_or(db).to_owned())
            .expect("the test URL names a database");
        Some(Box::new(PostgresServer::start_new(&database).await))
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(self.postgres_store(namespace).await))
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(self.postgres_store(namespace).await))
    }
}

/// A store with a pool of its own at `addr`; the schema is created there
/// (PostgreSQL keeps it across restarts, so no case needs to see it
/// missing).
async fn postgres_store_at(namespace: &str, addr: SocketAddr) -> PostgresStore {
    let store = PostgresStore::builder(url_with_addr(&postgres_url(), addr))
        .schema(TEST_SCHEMA)
        .table(format!("locks_{namespace}"))
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_or_else(|err| panic!("connect to PostgreSQL at {addr}: {err}"));
    store
        .ensure_schema()
        .await
        .unwrap_or_else(|err| panic!("ensure_schema at {addr}: {err}"));
    store
}

/// A database file per namespace.
pub struct SqliteHarness;

pub fn sqlite_path(namespace: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lockstore-sqlite-tests");
    std::fs::create_dir_all(&dir).expect("create the test database directory");
    dir.join(format!("{namespace}.db"))
}

pub async fn sqlite_store(path: &std::path::Path) -> SqliteStore {
    let store = SqliteStore::builder(path.to_str().expect("a UTF-8 temp path"))
        // Test files need not survive a power loss; this keeps the
        // 100,000-acquisition run from waiting on fsync.
        .durable(false)
        .busy_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("open a SQLite store");
    store.ensure_schema().await.expect("ensure_schema");
    store
}

#[lockstore_api::async_trait]
impl Harness for SqliteHarness {
    fn profile(&self) -> Profile {
        Profile {
            // A file on this host: no connection to break, no server to
            // restart; other processes on the host share the locks. Expiry
            // reads the host clock inside each statement, which every
            // client shares and none can set apart (SQLite has no clock
            // hook short of a custom VFS).
            network: Network::Embedded,
            request_timeout: None,
            restart: Restart::NoServer,
            client_clock: ClientClock::Shared,
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(sqlite_store(&sqlite_path(namespace)).await)
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(sqlite_store(&sqlite_path(namespace)).await))
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(sqlite_store(&sqlite_path(namespace)).await))
    }
}
