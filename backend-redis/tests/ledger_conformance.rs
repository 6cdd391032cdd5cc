//! The shared ledger conformance suite against a real Redis, twice: with
//! the default (records kept until purge), as `redis_ledger::…`, and with a
//! ledger retention, as `redis_ledger_retention::…`, so every case also runs
//! through the `PEXPIRE`/`PERSIST` and high-water paths of the scripts. The
//! retention (an hour) never elapses during a case: a record vanishing
//! mid-case is tested in `tests/ledger.rs`.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_conformance::provision::{Service, server_url};
use lockstore_conformance::{Harness, Profile};
use lockstore_redis::RedisStore;

struct RedisHarness {
    url: String,
    retention: Option<Duration>,
}

impl RedisHarness {
    fn from_env(retention: Option<Duration>) -> Self {
        Self {
            url: server_url(Service::Redis),
            retention,
        }
    }

    async fn connect(&self, namespace: &str) -> RedisStore {
        // One prefix per namespace: records, ledger and channel never meet.
        let mut builder = RedisStore::builder(self.url.clone())
            .key_prefix(format!("lockstore-test:{namespace}:"));
        if let Some(retention) = self.retention {
            builder = builder.ledger_retention(retention);
        }
        builder
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

lockstore_conformance::ledger_suite!(redis_ledger, RedisHarness::from_env(None));
lockstore_conformance::ledger_suite!(
    redis_ledger_retention,
    RedisHarness::from_env(Some(Duration::from_secs(3600)))
);
