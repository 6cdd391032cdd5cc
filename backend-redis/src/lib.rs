//! A Redis backend for [lockstore](lockstore_api): leased locks with fencing
//! tokens, where acquire, renew and release are each one Lua script call
//! (`EVALSHA`), expiry is judged by the Redis server's clock, and waiters are
//! woken by pub/sub the moment a lock is released.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore_api::{AcquireOptions, LockClient};
//! use lockstore_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lockstore_api::LockError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/0")
//!     .key_prefix("billing:")
//!     .connect()
//!     .await?;
//! let client = LockClient::new(store);
//! let guard = client
//!     .acquire("invoices/2026-11", AcquireOptions::new(Duration::from_secs(30)).wait_up_to(Duration::from_secs(10)))
//!     .await?;
//! println!("writing with fence {}", guard.fence());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # What it needs from the server
//!
//! The promises of the lockstore contract hold on Redis under three
//! conditions, and break without them:
//!
//! * **No eviction.** With a `maxmemory-policy` other than `noeviction`
//!   (the `volatile-*` ones too: records carry a TTL), a full server can
//!   delete a *live* lease, and the next acquirer takes the key while the
//!   holder still believes in it. `connect()` asks the server and warns, or
//!   refuses with [`EvictionCheck::Refuse`]; managed services that hide
//!   `CONFIG` are not checked.
//! * **No asynchronous failover.** A replica promoted by Sentinel,
//!   ElastiCache or any async replication may not have the last grant: a
//!   second client then acquires the same key — two holders. Fencing tokens
//!   still refuse the older holder's writes only if the new primary's clock
//!   is not behind. Use one primary (with persistence if fences must
//!   outlive restarts), or a backend with synchronous commits (PostgreSQL,
//!   DynamoDB).
//! * **No backward clock step across a restart.** Without persistence, a
//!   restarted server derives fences from its clock; a clock stepped back
//!   by Δ hands out lower fences to keys granted within Δ. A forward step
//!   larger than the holders' safety margin ends leases early.
//!
//! Keys are cluster-slot-safe (one hash tag per record), but the store
//! connects to one node: Redis Cluster connections are not built yet.
//!
//! # The record
//!
//! Every lock is one Redis hash, `<prefix>{<key>}` (default prefix
//! `lockstore:`; the braces make the lock key the Redis Cluster hash tag, so
//! anything later versions keep per lock lands in the same slot):
//!
//! | field           | meaning                                               |
//! |-----------------|-------------------------------------------------------|
//! | `lease_id`      | the holder's secret lease id, 32 hex digits           |
//! | `owner`         | the holder's owner label, for reports                 |
//! | `fence`         | the last fencing token handed out (kept on release)   |
//! | `expires_at_us` | the lease's end, server time in microseconds          |
//!
//! A release deletes only `lease_id`, `owner` and `expires_at_us`; the
//! scripts read fields by name and ignore others, so fields added by later
//! versions do not break locks stored by this one. The hash itself
//! expires (Redis `PEXPIRE`) `TTL + idle retention` after the last acquire
//! or renew, and `idle retention` after a release (default one day,
//! [`RedisStoreBuilder::idle_retention`]), so memory is bounded by the keys
//! used within that window.
//!
//! # Fencing tokens and clocks
//!
//! A new lease gets `fence = max(last fence + 1, server time in µs)`, both
//! read inside the script (`redis.call('TIME')`). The first term makes
//! tokens strictly increase while the record exists; the second keeps them
//! increasing after the record is gone — expired after its idle retention,
//! or lost in a restart without persistence. This assumes:
//!
//! * the Redis server's clock does not go backwards (across restarts and
//!   failovers, the new server's clock is not behind the old one's), and
//! * a key is not acquired more than a million times a second for long, so
//!   the counter does not run ahead of the clock by more than the time a
//!   restart takes (or the idle retention).
//!
//! Expiry too is judged by the server's clock (`expires_at_us` against
//! `TIME`), never the client's. Reading `TIME` before writing needs effects
//! replication, the default since Redis 5 (the scripts ask for it on older
//! servers); tested with Redis 7.
//!
//! # Round trips
//!
//! Each of `try_acquire`, `renew`, `release`, `inspect` is one `EVALSHA`. A
//! refused acquire returns the holder's owner, fence and time left in the
//! same reply. `NOSCRIPT` (first use, or after a restart) costs one extra
//! `SCRIPT LOAD`, handled by [`redis::Script`]. A `try_acquire` with the lease
//! id that already holds the key refreshes it and returns the same fence, so
//! a request retried after a lost reply never makes a second holder.
//!
//! # Waking waiters
//!
//! The release script publishes the key on `<prefix>released`. The store
//! keeps one pub/sub connection for all its waiters (started by the first),
//! and [`LockStore::release_signal`](lockstore_api::LockStore::release_signal)
//! resolves on the next release of that key — or on any change of the
//! subscription, since waking early is harmless. A hand-off therefore takes
//! about one round trip; if the listener is down, waiters poll with the
//! client's jittered backoff.
//!
//! # Execution ledger ("run once")
//!
//! The store is also a [`LedgerStore`](lockstore_api::ledger::LedgerStore):
//! one run record per key (its status, attempts, fence, stored result or
//! errors), so a piece of work runs at most once successfully, a duplicate
//! gets the stored result, and a crashed run is taken over when its lease
//! expires. Every transition (begin, renew, finish, enqueue, retry) is one
//! `EVALSHA`, judged by the server's `TIME`; status queries read per-status
//! sorted sets written by the same scripts, so they never drift; a finish
//! wakes waiters through the same pub/sub connection as a release. A
//! namespace's ledger lives under one hash tag, `<prefix>{ledger}`, so it is
//! cluster-slot-safe. Finished records stay until
//! [`purge`](lockstore_api::ledger::LedgerStore::purge), or expire by
//! themselves after [`RedisStoreBuilder::ledger_retention`] without the
//! key's next fence going backwards. Keys, fences and retention in detail:
//! [`ledger`].
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore_api::ledger::{BeginOutcome, BeginRequest, Finish, FinishRequest, LedgerStore};
//! use lockstore_api::{LeaseId, LockKey, OwnerLabel, Ttl};
//! use lockstore_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/0")
//!     .key_prefix("billing:")
//!     .ledger_retention(Duration::from_secs(14 * 24 * 3600))
//!     .connect()
//!     .await?;
//! let request = BeginRequest {
//!     key: LockKey::new("invoice-2026-11-0042")?,
//!     lease_id: LeaseId::random(),
//!     ttl: Ttl::new(Duration::from_secs(60))?,
//!     owner: OwnerLabel::new("worker-7")?,
//!     max_attempts: 3,
//!     request_hash: None,
//! };
//! match store.begin(&request).await? {
//!     BeginOutcome::Started { fence, .. } => {
//!         // ... do the work, writing with `fence` ...
//!         let done = Finish::Succeeded { result: Some(b"sent".to_vec()) };
//!         store
//!             .finish(&FinishRequest { key: request.key.clone(), lease_id: request.lease_id, finish: done })
//!             .await?;
//!     }
//!     BeginOutcome::Existing(record) => println!("already {:?}", record.status),
//! }
//! # Ok(()) }
//! ```
//!
//! Most applications use the ledger through the client layer
//! ([`Ledger`](lockstore_api::ledger::Ledger): run once, wait, replay) rather
//! than these calls.
//!
//! # Connections and errors
//!
//! Commands go over one multiplexed [`ConnectionManager`](redis::aio::ConnectionManager)
//! that reconnects by itself. Connection loss, timeouts and the `LOADING`,
//! `BUSY`, `READONLY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `OOM`
//! replies are retryable errors; a wrong type under a lock key or an
//! unexpected reply is permanent; a bad URL, failed authentication or a
//! missing ACL permission is a [`LockError::Config`](lockstore_api::LockError::Config)
//! that never shows the password. Redis Cluster needs a cluster-aware proxy
//! for now (the keys are slot-ready; the connection is single-node).

#![forbid(unsafe_code)]

mod config;
mod connection;
mod error;
pub mod ledger;
mod notify;
mod scripts;
mod store;

pub use config::{
    DEFAULT_IDLE_RETENTION, DEFAULT_KEY_PREFIX, DEFAULT_PURGE_BATCH_SIZE, EvictionCheck,
    RedisStoreBuilder,
};
pub use connection::RedisConnection;
pub use store::RedisStore;
