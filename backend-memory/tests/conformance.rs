//! The conformance suite on the memory backend, on a paused tokio clock.

use std::sync::Arc;
use std::time::Duration;

use lockstore_api::LockStore;
use lockstore_api::ledger::LedgerStore;
use lockstore_api::semaphore::SemaphoreStore;
use lockstore_conformance::{ClientClock, Clock, Harness, Network, Processes, Profile, Restart};
use lockstore_memory::MemoryStore;

/// All namespaces of one test live in one registry, as they would in a
/// process sharing a `MemoryStore`.
#[derive(Default)]
struct MemoryHarness {
    root: MemoryStore,
}

#[async_trait::async_trait]
impl Harness for MemoryHarness {
    fn profile(&self) -> Profile {
        Profile {
            clock: Clock::Tokio,
            short_ttl: Duration::from_secs(1),
            tolerance: Duration::ZERO,
            release_notifications: true,
            model_cases: 256,
            concurrent_acquisitions: 100_000,
            // Locks in this process's memory, on tokio's clock: no network,
            // no server, no second process, no client clock to set apart.
            network: Network::Embedded,
            request_timeout: None,
            restart: Restart::NoServer,
            processes: Processes::OneProcess,
            client_clock: ClientClock::Shared,
            takeover_needs_watching: false,
        }
    }

    async fn store(&self, namespace: &str) -> Arc<dyn LockStore> {
        Arc::new(self.root.namespace(namespace))
    }

    async fn ledger(&self, namespace: &str) -> Option<Arc<dyn LedgerStore>> {
        Some(Arc::new(self.root.namespace(namespace)))
    }

    async fn semaphore(&self, namespace: &str) -> Option<Arc<dyn SemaphoreStore>> {
        Some(Arc::new(self.root.namespace(namespace)))
    }
}

lockstore_conformance::suite!(memory, MemoryHarness::default());
lockstore_conformance::ledger_suite!(memory_ledger, MemoryHarness::default());
lockstore_conformance::semaphore_suite!(memory_semaphore, MemoryHarness::default());
