//! Uncontended acquire + release on the memory backend, next to
//! `tokio::sync::Mutex` lock + unlock on the same machine.
//!
//! `cargo bench -p lockstore-memory` prints one line per variant in the
//! `uncontended` group:
//! * `tokio_mutex` — the floor: an async mutex, no leases, no tokens;
//! * `store` — `LockStore::try_acquire` + `release`, the backend alone;
//! * `client_lease` — `LockClient::acquire_lease` + `release`: validation,
//!   lease id, tracing span;
//! * `client_guard` — `LockClient::acquire` + `LockGuard::release`: the above
//!   plus spawning and stopping the renewal task.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use lockstore_api::{
    AcquireOptions, AcquireRequest, LeaseId, LockClient, LockKey, LockStore, OwnerLabel, Ttl,
};
use lockstore_memory::MemoryStore;

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("uncontended");

    let mutex = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio_mutex", |b| {
        b.to_async(&rt).iter(|| async {
            let mut guard = mutex.lock().await;
            *guard += 1;
            black_box(&*guard);
        })
    });

    let store = MemoryStore::new();
    let key = LockKey::new("bench").expect("valid");
    let ttl = Ttl::new(Duration::from_secs(30)).expect("valid");
    let owner = OwnerLabel::new("bench").expect("valid");
    group.bench_function("store", |b| {
        b.to_async(&rt).iter(|| async {
            let request = AcquireRequest {
                key: key.clone(),
                lease_id: LeaseId::random(),
                ttl,
                owner: owner.clone(),
            };
            black_box(store.try_acquire(&request).await.expect("free"));
            black_box(store.release(&key, request.lease_id).await.expect("held"));
        })
    });

    let client = LockClient::new(MemoryStore::new());
    let options = AcquireOptions::new(Duration::from_secs(30));
    group.bench_function("client_lease", |b| {
        b.to_async(&rt).iter(|| async {
            let lease = client.acquire_lease(&key, options).await.expect("free");
            black_box(client.release(&lease).await.expect("held"));
        })
    });

    group.bench_function("client_guard", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = client.acquire(&key, options).await.expect("free");
            black_box(guard.release().await.expect("held"));
        })
    });
    group.finish();
}

criterion_group!(benches, uncontended);
criterion_main!(benches);
