//! The shared ledger conformance suite against a real Redis.

use std::sync::Arc;

use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_conformance::provision::{Service, server_url};
use lockstore_conformance::{Harness, Profile};
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
        // One prefix per namespace: records, ledger and channel never meet.
        RedisStore::builder(self.url.clone())
            .key_prefix(format!("lockstore-test:{namespace}:"))
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect to the test Redis: {err}"))
    }
}

#[async_trait::async_trait]
impl Harness for RedisHarness {
    fn profile(&self) -> Profile {
        Profile::real_server()
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(self.connect(namespace).await)
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(self.connect(namespace).await))
    }
}

lockstore_conformance::ledger_suite!(redis_ledger, RedisHarness::from_env());
