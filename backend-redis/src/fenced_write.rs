//! Fenced writes on Redis: a value set only if the fence stored beside it
//! is lower than the writer's, in one script call (`EVALSHA`).
//!
//! A lease's fencing token protects a resource only if the resource checks
//! it. For data kept in Redis, [`fenced_set`] keeps a value and the fence of
//! its last write in one hash (fields `value` and `fence`) and writes only
//! with a higher fence, so a paused holder that wakes after its lease was
//! taken over cannot overwrite its successor's value. The hash is one key,
//! so the script runs on a Redis Cluster as on one server (a value and its
//! fence in two keys would need a hash tag to share a slot). The script is
//! `src/lua/fenced_set.lua`.
//!
//! Redis has no transaction that spans arbitrary writes of the caller's and
//! the ledger's record (`MULTI` cannot condition the caller's writes on the
//! run's lease, and a script must name every key it touches up front, in
//! one slot on a cluster). So a run's success cannot be committed with the
//! caller's writes as on PostgreSQL, SQLite or DynamoDB; what Redis offers
//! is this fenced write: the effect of a run that was taken over is
//! refused, and a run that repeats its effect after a crash writes it with
//! a higher fence, over the old one, never beside it.
//!
//! ```no_run
//! use lockstore_redis::fenced_write::{FencedSet, fenced_set};
//! # async fn demo(store: lockstore_redis::RedisStore, run: lockstore_api::ledger::RunGuard) -> Result<(), lockstore_api::LockError> {
//! let mut conn = store.connection(); // or any connection to the data's server
//! match fenced_set(&mut conn, "report:2026-11-23", run.fence(), b"42 rows").await? {
//!     FencedSet::Applied => run.succeed(None).await?,
//!     FencedSet::Stale { stored } => println!("a newer run ({stored}) wrote it; ours is stale"),
//! }
//! # Ok(()) }
//! ```

use std::sync::LazyLock;

use lockstore_api::{FencingToken, LockError};
use redis::Script;
use redis::aio::ConnectionLike;

use crate::error::{command_error, unexpected_reply};

static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/fenced_set.lua")));

/// What [`fenced_set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FencedSet {
    /// The value was written with the writer's fence: the key had none, or
    /// a lower one.
    Applied,
    /// Refused: a write with this fence or a higher one came first. Nothing
    /// was changed.
    Stale {
        /// The fence stored with the value.
        stored: FencingToken,
    },
}

/// Sets `value` at `key` (a hash: fields `fence` and `value`) only if the
/// fence stored there is lower than `fence`, in one script call. Equal
/// fences are refused too, so a run's repeated write reports `Stale` with
/// its own fence.
///
/// `key` is used as given (no key prefix): it is the caller's data, on any
/// connection — [`RedisStore::connection`](crate::RedisStore::connection),
/// or a connection of the caller's to another server or cluster.
///
/// # Errors
/// A [`LockError::Backend`] (retryable or not, as for the store's own
/// scripts) when the command fails, for example on a key that holds
/// another type.
pub async fn fenced_set<C: ConnectionLike + Send>(
    conn: &mut C,
    key: &str,
    fence: FencingToken,
    value: &[u8],
) -> Result<FencedSet, LockError> {
    let doing = format!("fenced set of {key:?}");
    let reply: redis::Value = FENCED_SET
        .key(key)
        .arg(fence.get().to_string())
        .arg(value)
        .invoke_async(conn)
        .await
        .map_err(|err| command_error(&doing, err))?;
    let parsed = match &reply {
        redis::Value::Array(items) if items.len() == 2 => {
            let applied = matches!(items[0], redis::Value::Int(1));
            let stored = match &items[1] {
                redis::Value::BulkString(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok()),
                _ => None,
            };
            stored.map(|stored| (applied, stored))
        }
        _ => None,
    };
    match parsed {
        Some((true, _)) => Ok(FencedSet::Applied),
        Some((false, stored)) => Ok(FencedSet::Stale {
            stored: FencingToken::new(stored),
        }),
        None => Err(unexpected_reply(&doing, &reply)),
    }
}

/// The value at `key` and the fence of its last write, as [`fenced_set`]
/// stored them; `None` when the key has none.
///
/// # Errors
/// As [`fenced_set`]; a permanent error when the hash has a value but no
/// readable fence (it was not written by [`fenced_set`]).
pub async fn read_fenced<C: ConnectionLike + Send>(
    conn: &mut C,
    key: &str,
) -> Result<Option<(FencingToken, Vec<u8>)>, LockError> {
    let doing = format!("fenced read of {key:?}");
    let (fence, value): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(key)
        .arg("fence")
        .arg("value")
        .query_async(conn)
        .await
        .map_err(|err| command_error(&doing, err))?;
    match (fence, value) {
        (None, None) => Ok(None),
        (Some(fence), Some(value)) => match fence.parse::<u64>() {
            Ok(fence) => Ok(Some((FencingToken::new(fence), value))),
            Err(_) => Err(unexpected_reply(&doing, &redis::Value::SimpleString(fence))),
        },
        (fence, _) => Err(unexpected_reply(
            &doing,
            &redis::Value::SimpleString(format!(
                "fence {fence:?} without a value or the other way round"
            )),
        )),
    }
}
