//! A [`LockStore`](lockstore_api::LockStore) on Amazon DynamoDB: leased locks
//! with fencing tokens for services on Lambda, Fargate and EC2, where a
//! DynamoDB table is the one piece of shared state every instance reaches.
//!
//! ```no_run
//! use std::time::Duration;
//! use lockstore_api::{AcquireOptions, LockClient};
//! use lockstore_dynamodb::DynamoDbStore;
//!
//! # async fn demo() -> Result<(), lockstore_api::LockError> {
//! // Credentials and region come from the standard AWS chain (environment,
//! // profile, SSO, container or instance role).
//! let store = DynamoDbStore::builder("YourTable")
//!     .partition_key("YourKey")
//!     .key_prefix("billing:")
//!     .build()
//!     .await?;
//! store.check_table().await?; // says what to fix, in words
//!
//! let client = LockClient::new(store);
//! let guard = client
//!     .acquire("nightly-invoices", AcquireOptions::new(Duration::from_secs(30)))
//!     .await?;
//! // ... write with guard's fencing token so a stale holder is refused ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! For a local emulator (DynamoDB Local, moto, dynalite), add
//! `.endpoint_url("http://127.0.0.1:8000").region("us-east-1")
//! .static_credentials("test", "test")`. To bring your own SDK client (own
//! interceptors, retry policy, HTTP client), use
//! [`DynamoDbStoreBuilder::build_with_client`].
//!
//! # One request per operation
//!
//! | operation          | requests | what                                                     |
//! |--------------------|----------|----------------------------------------------------------|
//! | acquire (granted)  | 1        | conditional `UpdateItem`, `ReturnValues=UPDATED_NEW`      |
//! | acquire (refused)  | 1        | the same; the holder comes back in the refusal (`ReturnValuesOnConditionCheckFailure=ALL_OLD`) |
//! | renew              | 1        | conditional `UpdateItem`                                  |
//! | release            | 1        | conditional `UpdateItem`, `ReturnValues=ALL_OLD`          |
//! | inspect            | 1        | `GetItem` with `ConsistentRead`                           |
//!
//! Three exceptions, all rare and each a second request: an acquire retried
//! by the lease that already holds the key (its first reply was lost) finds
//! its own lease in the refusal and extends it with a second `UpdateItem`,
//! so it keeps its fencing token; a write refused only by the cleanup rule
//! ("Fencing": the item's fence is ahead of this writer's clock) is sent
//! again with a cleanup time dated from the fence; and a server that does
//! not return the item with a refusal (DynamoDB and moto 5 do) is asked with
//! a `GetItem`, counted by [`DynamoDbStore::holder_reads`]. An attempt that
//! finds the lease expired or released between its write and its reading of
//! the refusal simply tries again. Renewals and releases also ask for the
//! item with a refusal: a release retried by the SDK after its first reply
//! was lost recognises its own applied attempt there (the item still shows
//! that request's `record_version`) and answers as the first reply would
//! have, `Released` for a live lease.
//!
//! # Item layout
//!
//! One item per key; see [`layout`] for the attributes. A release keeps the
//! item, only removing the lease, so the fencing counter survives; DynamoDB
//! TTL deletes idle items after
//! [`cleanup_after`](DynamoDbStoreBuilder::cleanup_after) (7 days). In
//! [`TakeoverMode::SkewFree`] a held item carries no cleanup time at all
//! (see "Clocks"); only its release sets one.
//!
//! # Execution ledger
//!
//! The store is also a [`LedgerStore`](lockstore_api::ledger::LedgerStore)
//! ("run once"): one run record per key in its own item beside the lock
//! item, each transition one conditional `UpdateItem`, status queries
//! through the sparse index `exec_status-index` that
//! [`create_table`](DynamoDbStore::create_table) adds. Finished records
//! stay until [`purge`](lockstore_api::ledger::LedgerStore::purge) (which
//! keeps the key's fence), unless
//! [`ledger_retention`](DynamoDbStoreBuilder::ledger_retention) lets
//! DynamoDB TTL delete them; a store in [`TakeoverMode::SkewFree`] refuses
//! ledger requests with a config error. See [`ledger`].
//!
//! # Semaphores
//!
//! The store is also a
//! [`SemaphoreStore`](lockstore_api::semaphore::SemaphoreStore): a key's
//! permits are one item of their own beside the lock item (partition-key
//! value: the lock item's, then `"\0sem"`), with the limit, the last fence
//! and a map of the permits. Unlike a lock's, an **acquire takes two
//! requests**: a consistent `GetItem`, then an `UpdateItem` conditioned on
//! the `record_version` it read (DynamoDB cannot count a map's live entries
//! inside a condition); renew and release are one conditional `UpdateItem`
//! each, inspect one `GetItem`. Fences and cleanup times follow the lock's
//! rules below, and expiry its wall-clock rule; a store in
//! [`TakeoverMode::SkewFree`] refuses semaphores with a config error. See
//! [`semaphore`].
//!
//! # Fencing
//!
//! `fence` is `if_not_exists(fence, :fence_base) + 1` in every grant, so it
//! rises by one per acquisition while the item exists. When the item does not
//! exist — a new key, or one DynamoDB TTL deleted — the count starts from
//! `:fence_base`, the writer's wall clock in **microseconds** since 1970.
//!
//! Every write that sets the cleanup time `C` is conditional on the item's
//! fence staying below `(C − cleanup_after)` in microseconds (the *cleanup
//! rule*, in the expressions module). The writer computes `C` from its own
//! clock; if the item's fence is higher — its creator's clock was ahead, or
//! this writer's is behind — the condition fails, the refusal shows the
//! fence, and the write is sent again with `C` computed from the fence (a
//! second request, only then). DynamoDB TTL deletes an item only after AWS's
//! clock passes `C`. So tokens stay strictly increasing across deletion
//! provided that:
//!
//! * the clock of the client that **re-creates** a deleted item is less than
//!   `cleanup_after` (at least 1 h, 7 days by default) behind AWS's clock.
//!
//! That is the only clock assumption of fencing, in both takeover modes: the
//! clocks of the item's creator and of its later writers do not matter (a
//! creator a month ahead only makes the item live a month longer), and the
//! rate of acquisitions does not either. Deleting an item by hand behaves
//! like TTL if it is done no earlier than its cleanup time; deleting it
//! sooner can make the next token lower.
//!
//! Tokens are large numbers (about 1.7 × 10¹⁵ today), but plain `u64`s.
//!
//! # Clocks
//!
//! DynamoDB has no server clock, so expiry compares clocks of different
//! clients. A writer stores `lease_expires_at_ms` = its wall clock + TTL.
//! In the default [`TakeoverMode::WallClock`]:
//!
//! * another client takes the lease over once *its* wall clock is past
//!   `lease_expires_at_ms + clock_skew_allowance` (default 1 s,
//!   [`clock_skew_allowance`](DynamoDbStoreBuilder::clock_skew_allowance));
//! * the holder's renew and release count the lease as live only while its
//!   own clock is before `lease_expires_at_ms` (no allowance), and the client
//!   layer stops trusting the lease at `request sent + TTL` on its monotonic
//!   clock, before either;
//! * **assumed:** the wall clocks of any two clients differ by less than the
//!   allowance (NTP or the Amazon Time Sync Service keeps EC2, Lambda and
//!   Fargate within a few milliseconds), and a wall clock does not jump
//!   backwards by more than that during a lease. Under that assumption no
//!   takeover happens before the holder's own deadline.
//!
//! [`TakeoverMode::SkewFree`] is the AWS DynamoDB Lock Client's scheme and
//! assumes nothing about wall clocks for mutual exclusion: a client takes a
//! lease over only after
//! it has seen the same `record_version` (rewritten by every acquire and
//! renew) unchanged for the lease's full TTL on its own monotonic clock, and
//! the takeover write is conditional on that version. It assumes only that
//! monotonic clocks of clients run at about the same rate. The cost: a client
//! that first meets a long-expired lease still waits one TTL (a
//! [`Holder`](lockstore_api::Holder) report says how long), and it keeps an
//! in-memory, bounded map of the versions it has seen. All clients of one
//! table should use the same mode.
//!
//! Because a skew-free writer's clock may be arbitrarily wrong, a skew-free
//! grant or renewal **removes** the item's cleanup time instead of dating
//! it: DynamoDB TTL can then never delete the item of a live lease (a
//! writer a week behind would otherwise date the deletion in the past, and
//! a second client would find the key free). A release sets the cleanup
//! time again, by the cleanup rule above: a releaser's bad clock can only
//! change when a *free* item is deleted, never date it before its fence.
//! The price: the item of a lease that is never released
//! (its holder crashed) stays until the key is next acquired and released;
//! a takeover is such an acquisition.
//!
//! In both modes a refused acquire's [`Holder::expires_in`] is the time until
//! *this* client could take over (the allowance included), which is what the
//! client layer's waiting uses.
//!
//! [`Holder::expires_in`]: lockstore_api::Holder::expires_in
//!
//! # Errors
//!
//! Throttling, `ProvisionedThroughputExceededException`,
//! `RequestLimitExceeded`, server errors, timeouts and connection failures
//! are retryable [`LockError::Backend`](lockstore_api::LockError::Backend)s;
//! a missing table or wrong credentials are
//! [`LockError::Config`](lockstore_api::LockError::Config) with a message
//! that says what to do; validation errors are permanent. The SDK error is
//! kept as the source. A write whose reply did not arrive is reported as an
//! error, never as a held lock; retrying it with the same lease id is safe.
//!
//! # The table
//!
//! Any table with a string partition key and no sort key works, e.g. an
//! existing `YourTable` keyed by `YourKey`.
//! [`create_table`](DynamoDbStore::create_table) makes one (on-demand
//! billing, DynamoDB TTL on the cleanup attribute);
//! [`check_table`](DynamoDbStore::check_table) explains what is wrong with
//! an existing one. On a DynamoDB-compatible server without TTL operations
//! (dynalite) the table is still created, TTL cleanup stays off, and both
//! say so (a `tracing` warning, [`TableProblem::TtlUnsupported`]); what each
//! test server lacks and how the store copes is in [`compatibility`]. The store needs `dynamodb:UpdateItem` and
//! `dynamodb:GetItem`; the helpers also `DescribeTable`,
//! `DescribeTimeToLive`, `CreateTable` and `UpdateTimeToLive`.

#![forbid(unsafe_code)]

mod config;
mod error;
mod expressions;
#[doc = include_str!("../COMPATIBILITY.md")]
pub mod compatibility {}
pub mod fenced_write;
pub mod layout;
pub mod ledger;
mod ledger_expressions;
mod ledger_table;
mod observe;
pub mod semaphore;
mod store;
mod table;

pub use config::{
    DEFAULT_CLEANUP_AFTER, DEFAULT_CLOCK_SKEW_ALLOWANCE, DynamoDbStoreBuilder, MAX_CLEANUP_AFTER,
    MAX_CLOCK_SKEW_ALLOWANCE, MAX_KEY_PREFIX_LEN, MIN_CLEANUP_AFTER, SystemClock, TakeoverMode,
    WallClock,
};
pub use store::DynamoDbStore;
pub use table::{TableDefinition, TableProblem};

/// The backend name in errors and traces.
pub(crate) const BACKEND: &str = "dynamodb";
