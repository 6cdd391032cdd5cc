//! The item layout: one item per lock key, and the attribute names it uses.
//!
//! | attribute            | type | meaning                                                        |
//! |----------------------|------|----------------------------------------------------------------|
//! | *partition key*      | S    | key prefix + lock key (the attribute name is configurable)     |
//! | `fence`              | N    | last fencing token handed out for this key; never removed      |
//! | `lease_id`           | S    | 32 hex digits of the live lease; absent once released          |
//! | `lease_owner`        | S    | owner label of the lease, for `Holder` reports                 |
//! | `lease_expires_at_ms`| N    | writer's wall clock, ms since the Unix epoch, when it expires; kept after release |
//! | `lease_ttl_ms`       | N    | the TTL the lease was granted or renewed with                  |
//! | `record_version`     | S    | random, rewritten by every write (the "rvn" of the AWS client) |
//! | `released_at_ms`     | N    | writer's wall clock when the lease was released                |
//! | *cleanup attribute*  | N    | epoch **seconds** after which DynamoDB TTL may delete the item; absent on a held item in skew-free mode |
//!
//! A released item keeps `fence`, `record_version`, `released_at_ms`,
//! `lease_expires_at_ms` (the released lease's expiry: with
//! `released_at_ms` it lets an SDK retry of the release tell whether the
//! lease was live) and the cleanup time; `lease_id`, `lease_owner` and
//! `lease_ttl_ms` are removed. An item with no `lease_id` is free, whatever
//! else it holds.
//!
//! The cleanup time is never earlier than the item's `fence` read as
//! microseconds since 1970, plus `cleanup_after`: the cleanup rule of the
//! crate docs, "Fencing".
//!
//! # The execution ledger
//!
//! Run records are separate items in the same table (partition-key value:
//! the lock item's, then `"\0run"`), so they never touch a lock; their
//! attributes (`exec_*`, the `lease_*` of the running lease, `fence`) and
//! the sparse index `exec_status-index` are described in [`crate::ledger`].
//! Lock writes never touch `exec_*` attributes.
//!
//! # Semaphores
//!
//! A key's semaphore is a separate item too (partition-key value: the lock
//! item's, then `"\0sem"`), holding `permit_limit`, `fence`, `permits` (a
//! map of the permits), `record_version` and the cleanup time; see
//! [`crate::semaphore`].
//!
//! Any attribute starting with `exec_` or `lease_` is reserved, and so are
//! `permit_limit` and `permits`.

/// Last fencing token handed out for the key.
pub(crate) const FENCE: &str = "fence";
/// Lease id of the live lease.
pub(crate) const LEASE_ID: &str = "lease_id";
/// Owner label of the live lease.
pub(crate) const LEASE_OWNER: &str = "lease_owner";
/// Writer's wall-clock expiry, milliseconds since the Unix epoch.
pub(crate) const LEASE_EXPIRES_AT_MS: &str = "lease_expires_at_ms";
/// TTL of the live lease in milliseconds.
pub(crate) const LEASE_TTL_MS: &str = "lease_ttl_ms";
/// Random version rewritten by every write.
pub(crate) const RECORD_VERSION: &str = "record_version";
/// Writer's wall clock at release, milliseconds since the Unix epoch.
pub(crate) const RELEASED_AT_MS: &str = "released_at_ms";
/// A semaphore item's limit.
pub(crate) const PERMIT_LIMIT: &str = "permit_limit";
/// A semaphore item's permits: permit id → expiry, fence, owner.
pub(crate) const PERMITS: &str = "permits";

/// The default name of the partition-key attribute.
pub const DEFAULT_PARTITION_KEY: &str = "lock_key";
/// The default name of the attribute DynamoDB TTL deletes items by.
pub const DEFAULT_CLEANUP_ATTRIBUTE: &str = "cleanup_at";
/// The name reserved for the execution ledger's status index.
pub const RESERVED_STATUS_INDEX: &str = "exec_status-index";
