//! The item layout: one item per lock key, and the attribute names it uses.
//!
//! | attribute            | type | meaning                                                        |
//! |----------------------|------|----------------------------------------------------------------|
//! | *partition key*      | S    | key prefix + lock key (the attribute name is configurable)     |
//! | `fence`              | N    | last fencing token handed out for this key; never removed      |
//! | `lease_id`           | S    | 32 hex digits of the live lease; absent once released          |
//! | `lease_owner`        | S    | owner label of the lease, for `Holder` reports                 |
//! | `lease_expires_at_ms`| N    | writer's wall clock, ms since the Unix epoch, when it expires  |
//! | `lease_ttl_ms`       | N    | the TTL the lease was granted or renewed with                  |
//! | `record_version`     | S    | random, rewritten by every write (the "rvn" of the AWS client) |
//! | `released_at_ms`     | N    | writer's wall clock when the lease was released                |
//! | *cleanup attribute*  | N    | epoch **seconds** after which DynamoDB TTL may delete the item |
//!
//! A released item keeps `fence`, `record_version`, `released_at_ms` and the
//! cleanup time; every `lease_*` attribute is removed. An item with no
//! `lease_id` is free.
//!
//! # Reserved for the execution ledger
//!
//! The next release stores job outcomes in the same item. These names are
//! reserved now so that stored locks keep working when it lands, and lock
//! writes never touch them (all lock writes are `UpdateItem` with explicit
//! `SET`/`REMOVE` lists, never a whole-item `PutItem`):
//!
//! * `exec_status` (S) — e.g. `running`, `succeeded`, `failed`; the partition
//!   key of a sparse global secondary index named `exec_status-index`
//!   (items without the attribute, i.e. plain locks, are not in it);
//! * `exec_attempts` (N), `exec_result` (S or B), `exec_error` (S),
//!   `exec_updated_at_ms` (N).
//!
//! Any attribute starting with `exec_` or `lease_` is reserved.

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

/// The default name of the partition-key attribute.
pub const DEFAULT_PARTITION_KEY: &str = "lock_key";
/// The default name of the attribute DynamoDB TTL deletes items by.
pub const DEFAULT_CLEANUP_ATTRIBUTE: &str = "cleanup_at";
/// The name reserved for the execution ledger's status index.
pub const RESERVED_STATUS_INDEX: &str = "exec_status-index";
