//! The shared conformance suite against a real Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockStore;
use lockstore_api::semaphore::SemaphoreStore;
use lockstore_conformance::provision::{Service, server_url};
use lockstore_conformance::proxy::{url_host_port, url_with_addr};
use lockstore_conformance::servers::{PrivateServer, RedisServer};
use lockstore_conformance::{Harness, Profile, Restart};
use lockstore_redis::RedisStore;

struct RedisHarness {
    url: String,
}

impl RedisHarness {
    fn from_env() -> Self {
        Self {
            url: server_url(Service::Redis),
        }
    }

    async fn connect(&self, namespace: &str) -> RedisStore {
        // One prefix per namespace: the records and the release channel of
        // different namespaces never meet.
        RedisStore::builder(self.url.clone())
            .key_prefix(format!("lockstore-test:{namespace}:"))
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect to the test Redis: {err}"))
    }

    async fn connect_at(&self, namespace: &str, addr: SocketAddr) -> RedisStore {
        RedisStore::builder(url_with_addr(&self.url, addr))
            .key_prefix(format!("lockstore-test:{namespace}:"))
            .response_timeout(Some(REQUEST_TIMEOUT))
            .connect_timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect to Redis at {addr}: {err}"))
    }
}

/// What a single call of a store from `store_at` waits at most; the
/// profile states it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait::async_trait]
impl Harness for RedisHarness {
    fn profile(&self) -> Profile {
        // Redis judges expiry by its own clock at millisecond-or-better
        // resolution over a local socket: the real-server defaults fit. A
        // restart without persistence (how the suite's private servers
        // run) loses every lease.
        Profile {
            request_timeout: Some(REQUEST_TIMEOUT),
            restart: Restart::LosesLeases,
            ..Profile::real_server()
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(self.connect(namespace).await)
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(self.connect(namespace).await))
    }

    fn server_addr(&self) -> Option<String> {
        url_host_port(&self.url)
    }

    async fn store_at(&self, namespace: &str, addr: SocketAddr) -> Option<Arc<dyn LockStore>> {
        Some(Arc::new(self.connect_at(namespace, addr).await))
    }

    async fn semaphore_at(
        &self,
        namespace: &str,
        addr: SocketAddr,
    ) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(self.connect_at(namespace, addr).await))
    }

    async fn private_server(&self) -> Option<Box<dyn PrivateServer>> {
        Some(Box::new(RedisServer::start_new().await))
    }
}

lockstore_conformance::suite!(redis, RedisHarness::from_env());
lockstore_conformance::semaphore_suite!(redis_semaphore, RedisHarness::from_env());
