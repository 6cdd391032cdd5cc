//! The shared conformance suite against a real Redis.

use std::sync::Arc;

use lockstore_api::LockStore;
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
}

#[async_trait::async_trait]
impl Harness for RedisHarness {
    fn profile(&self) -> Profile {
        // Redis judges expiry by its own clock at millisecond-or-better
        // resolution over a local socket: the real-server defaults fit.
        Profile::real_server()
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        // One prefix per namespace: the records and the release channel of
        // different namespaces never meet.
        let store = RedisStore::builder(self.url.clone())
            .key_prefix(format!("lockstore-test:{namespace}:"))
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect to the test Redis: {err}"));
        Arc::new(store)
    }
}

lockstore_conformance::suite!(redis, RedisHarness::from_env());
