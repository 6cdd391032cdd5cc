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
//! The promises of the lockstore contract hold on Redis under these
//! conditions, and break without them:
//!
//! * **No eviction.** With a `maxmemory-policy` other than `noeviction`
//!   (the `volatile-*` ones too: records carry a TTL), a full server can
//!   delete a *live* lease, and the next acquirer takes the key while the
//!   holder still believes in it. `connect()` asks the server and warns, or
//!   refuses with [`EvictionCheck::Refuse`]; managed services that hide
//!   `CONFIG` are not checked.
//! * **No asynchronous failover.** A replica promoted by Sentinel, Redis
//!   Cluster, ElastiCache or any async replication may not have the last
//!   grant: a second client then acquires the same key — two holders.
//!   Fencing tokens still refuse the older holder's writes only if the new
//!   primary's clock is not behind. Use primaries without automatic
//!   failover (with persistence if fences must outlive restarts), or a
//!   backend with synchronous commits (PostgreSQL, DynamoDB). What failover
//!   does in detail: [Redis Cluster](#redis-cluster) below.
//! * **Persistence, for exclusion across restarts.** A restart without
//!   persistence loses every live lease: the next acquirer gets the key at
//!   once, while the old holder may still trust its lease until its own
//!   deadline. Fencing tokens still tell them apart (they come from the
//!   server clock, next bullet); the conformance suite's restart case
//!   checks exactly that.
//! * **No backward clock step across a restart.** Without persistence, a
//!   restarted server derives fences from its clock; a clock stepped back
//!   by Δ hands out lower fences to keys granted within Δ. A forward step
//!   larger than the holders' safety margin ends leases early.
//!
//! # Redis Cluster
//!
//! `RedisStore::builder("redis+cluster://10.0.0.1:6379,10.0.0.2:6379")`
//! (`rediss+cluster://` for TLS; or [`RedisStoreBuilder::cluster`] with
//! node URLs) connects to a cluster through some of its nodes, the seeds;
//! the client learns the others and follows `MOVED`/`ASK` redirects and
//! topology changes. Each script call is one `EVALSHA` on the primary of its
//! key's slot: a lock's record is `<prefix>{<key>}`, so locks spread over
//! the cluster by key, and every key a script touches shares the record's
//! hash tag, so no script crosses slots. The promises of the contract hold
//! per key exactly as on one server, under the same conditions — on every
//! primary:
//!
//! * **Eviction**: `connect()` asks every primary for its
//!   `maxmemory-policy` and warns (or refuses) naming the node.
//! * **Waking waiters**: the release script's `PUBLISH` is forwarded by the
//!   cluster to every node, so the store's one subscriber listens on one
//!   seed (the next one if that one is down) and hears releases on every
//!   primary. Each release costs one cluster-bus message per node; sharded
//!   pub/sub (`SPUBLISH`) would avoid that but need one subscription per slot.
//! * **The ledger**: every namespace's ledger lives under the hash tag
//!   `{ledger}` (see [`ledger`]), so all ledgers of a cluster share one slot
//!   and therefore one primary; the locks spread, the ledger does not.
//!
//! **Failover breaks mutual exclusion.** Replication is asynchronous: a
//! primary answers an acquire before its replicas have the write. If it
//! fails then and a replica is promoted, the grant is gone on the new
//! primary; the key looks free, and a second client acquires it while the
//! first still holds a lease it believes in — two holders, until the first
//! holder's lease runs out on its own deadline (its renewals fail: the new
//! primary does not know its lease id). Fencing tokens still order the two:
//! the second token is `max(last fence the replica saw + 1, new primary's
//! time in µs)`, above the lost grant's token as long as the new primary's
//! clock is not behind the old one's by more than the time between the lost
//! grant and the new one; a resource that refuses older fences then refuses
//! the stale holder. A ledger run is affected the same way (a finished
//! record lost in failover can run again). `WAIT 1 <ms>` after each grant
//! would make the reply wait until a replica has it, which narrows the
//! window but does not close it (a replica that has not acknowledged can
//! still be promoted, and a timed-out `WAIT` leaves the grant in place); it
//! costs a replica round trip per acquire and is not built. While a failover
//! runs, calls to the slots of the failed primary fail with retryable
//! errors (`CLUSTERDOWN`, timeouts) and the client retries them. Clusters
//! without replicas (or with manual failover only) keep the contract, at the
//! price of those slots being unavailable while their primary is down.
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
//! | `wake_fence`    | set to the holder's fence by a refused *waiting* acquire: its release publishes |
//!
//! A release deletes only `lease_id`, `owner`, `expires_at_us` and `wake_fence`; the
//! scripts read fields by name and ignore others, so fields added by later
//! versions do not break locks stored by this one. The hash itself
//! expires (Redis `PEXPIRE`) `TTL + idle retention` after the last acquire
//! or renew, and `idle retention` after a release (default one day,
//! [`RedisStoreBuilder::idle_retention`]), so memory is bounded by the keys
//! used within that window.
//!
//! What a lock costs the server is mostly its two scripts' `redis.call()`s:
//! four in an acquire (`TIME`, `HMGET`, `HSET`, `PEXPIRE`) and four in a
//! release (`HMGET`, `TIME`, `HDEL`, `PEXPIRE`, and a `PUBLISH` only when
//! someone waits). Each call — passing its arguments into Redis and its
//! reply back into Lua — costs more than the hash work it does, so an
//! acquire + release costs the server several times a plain `SET NX PX` +
//! Lua compare-and-delete, which has no fence, no server-clock expiry and no
//! wake-ups; the record's layout is a small part of it. The bench's `server`
//! table prints both, from `INFO commandstats`.
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
//! The release script publishes the key on `<prefix>released`, but only
//! when someone waits: an acquire made while a task of the store's process
//! waits for that key (it registered before the attempt) and refused by a
//! live lease writes `wake_fence = <that lease's fence>` in the same script,
//! and the release of that lease publishes only if `wake_fence` equals its
//! fence. A registration therefore never outlives the lease that refused it
//! (a later lease has a larger fence), and a release nobody waits for costs
//! no `PUBLISH` and wakes no listener. A waiter whose lease expired instead
//! of being released wakes by its own timer, set to the lease's end. The store
//! keeps one pub/sub connection for all its waiters (started by the first),
//! and [`LockStore::release_signal`](lockstore_api::LockStore::release_signal)
//! resolves on the next release of that key — or on any change of the
//! subscription, since waking early is harmless. A hand-off therefore takes
//! about one round trip; if the listener is down, waiters poll with the
//! client's jittered backoff.
//!
//! A release published while the pub/sub connection is silently dead (a
//! dropped NAT flow, a server that accepts but never answers) is lost. The
//! listener notices: connecting and subscribing are bounded by the sum of
//! the connect and response timeouts, and an idle subscription answers a
//! `PING` every 5 s
//! within the response timeout. Either failure wakes every waiter, which
//! tries again at once, and the listener subscribes again. A lost release
//! therefore costs a waiter at most the first of: 5 s + the response
//! timeout (10 s by default), the backoff ceiling of its client, or the
//! holder's time left.
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
//! that reconnects by itself, or on a cluster one
//! [`ClusterConnection`](redis::cluster_async::ClusterConnection) (both
//! behind [`RedisConnection`]). Connection loss, timeouts and the `LOADING`,
//! `BUSY`, `READONLY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `OOM`
//! replies are retryable errors; a wrong type under a lock key or an
//! unexpected reply is permanent; a bad URL, failed authentication or a
//! missing ACL permission is a [`LockError::Config`](lockstore_api::LockError::Config)
//! that never shows the password. A plain URL of one cluster node answers
//! keys of other nodes' slots with `MOVED`, reported as a
//! [`LockError::Config`](lockstore_api::LockError::Config) that says to use
//! a `redis+cluster://` URL.
//!
//! # Fenced writes
//!
//! [`fenced_write::fenced_set`] writes a value of yours only if the fence
//! stored beside it is lower than the writer's, in one script call (one
//! key, so on a cluster too). Redis has no transaction that spans your
//! writes and a run's record, so the ledger's success cannot commit with
//! them as on the SQL stores and DynamoDB; the fenced write is what keeps a
//! superseded run's effect out.

#![forbid(unsafe_code)]

mod config;
mod connection;
mod error;
pub mod fenced_write;
pub mod ledger;
mod notify;
mod scripts;
mod semaphore;
mod store;

pub use config::{
    DEFAULT_IDLE_RETENTION, DEFAULT_KEY_PREFIX, DEFAULT_PURGE_BATCH_SIZE,
    DEFAULT_STUCK_SCAN_BATCH_SIZE, EvictionCheck, RedisStoreBuilder,
};
pub use connection::RedisConnection;
pub use store::RedisStore;
