//! Memory of the memory backend, printed as a table: bytes per held lock,
//! per released (idle) lock, and per live guard (its lease, its renewal
//! task and its timers), measured as the growth of this process's resident
//! memory over many of them (`/proc/self/statm`, Linux).
//!
//! `cargo bench -p lockstore-memory --bench memory_bench`. Asserts nothing.

use std::time::Duration;

use lockstore_api::{
    AcquireOptions, AcquireRequest, LeaseId, LockClient, LockKey, LockStore, OwnerLabel, Ttl,
};
use lockstore_conformance::bench::{Table, resident_bytes};
use lockstore_memory::MemoryStore;

const LOCKS: usize = 200_000;
const GUARDS: usize = 20_000;

fn per(before: u64, after: u64, n: usize) -> String {
    format!("{:.0}", after.saturating_sub(before) as f64 / n as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(start) = resident_bytes() else {
        println!("memory_bench: no /proc/self/statm on this system; nothing measured");
        return;
    };
    let store = MemoryStore::new();
    let ttl = Ttl::new(Duration::from_secs(600)).expect("ttl");
    let owner = OwnerLabel::new("bench/pid-1/task-1").expect("owner");
    let keys: Vec<LockKey> = (0..LOCKS)
        .map(|i| LockKey::new(format!("jobs/2026-11-23/{i:08}")).expect("key"))
        .collect();
    let with_keys = resident_bytes().expect("statm");
    let mut leases = Vec::with_capacity(LOCKS);
    let with_ids = resident_bytes().expect("statm");
    for key in &keys {
        let request = AcquireRequest {
            key: key.clone(),
            lease_id: LeaseId::random(),
            ttl,
            owner: owner.clone(),
        };
        store.try_acquire(&request).await.expect("acquire");
        leases.push(request.lease_id);
    }
    let held = resident_bytes().expect("statm");
    for (key, id) in keys.iter().zip(&leases) {
        store.release(key, *id).await.expect("release");
    }
    let tracked_after_release = store.tracked_keys();

    let client = LockClient::new(MemoryStore::new());
    let before_guards = resident_bytes().expect("statm");
    let mut guards = Vec::with_capacity(GUARDS);
    for key in keys.iter().take(GUARDS) {
        guards.push(
            client
                .acquire(key, AcquireOptions::new(Duration::from_secs(600)))
                .await
                .expect("guard"),
        );
    }
    let with_guards = resident_bytes().expect("statm");
    for guard in guards {
        guard.release().await.expect("release");
    }

    let mut table = Table::new(
        format!(
            "Memory backend: resident memory per lock ({LOCKS} locks, {GUARDS} guards, keys of 25 bytes, owner label of 18)"
        ),
        &["what", "bytes each"],
    );
    table.row(vec![
        "held lock in the store (its slot: key, lease id, fence, owner, deadline)".into(),
        per(with_ids, held, LOCKS),
    ]);
    table.row(vec![
        format!(
            "released (idle) lock: forgotten at once ({tracked_after_release} keys tracked after releasing all)"
        ),
        "0".into(),
    ]);
    table.row(vec![
        "live guard (lease, renewal task, timers) plus its held slot".into(),
        per(before_guards, with_guards, GUARDS),
    ]);
    table.row(vec![
        "the caller's own LockKey values (not the store's)".into(),
        per(start, with_keys, LOCKS),
    ]);
    table.print();
}
