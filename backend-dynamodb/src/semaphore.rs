//! Semaphores on DynamoDB: [`SemaphoreStore`] for [`DynamoDbStore`].
//!
//! # Item layout
//!
//! A key's semaphore is **one item** of its own, beside the key's lock item
//! and run record: its partition-key value is the lock item's
//! ([`DynamoDbStore::item_key`]) followed by `"\0sem"`. Lock keys and key
//! prefixes cannot contain NUL, so no lock item (whose value has at most
//! the prefix's NUL) and no run record (suffix `"\0run"`) has that value.
//!
//! | attribute            | type | meaning                                                        |
//! |----------------------|------|----------------------------------------------------------------|
//! | `permit_limit`       | N    | the limit the permits in `permits` were granted under          |
//! | `fence`              | N    | last fencing token handed out for this semaphore; never removed |
//! | `permits`            | M    | permit id (32 hex digits) → `{expires_at_ms: N, fence: N, owner: S}` |
//! | `record_version`     | S    | random, rewritten by every write: what an acquire is conditioned on |
//! | *cleanup attribute*  | N    | epoch **seconds** after which DynamoDB TTL may delete the item |
//!
//! `expires_at_ms` is the writing client's wall clock + TTL, as a lock's
//! `lease_expires_at_ms`. A permit map may hold expired permits: the next
//! grant drops them. [`PermitLimit::MAX`](lockstore_api::semaphore::PermitLimit::MAX)
//! permits of the longest owner labels still fit DynamoDB's 400 KB item.
//!
//! # Requests per operation
//!
//! | operation            | requests | what                                                     |
//! |----------------------|----------|----------------------------------------------------------|
//! | acquire (any answer) | 2        | consistent `GetItem`, then (unless refused or a limit mismatch, which need no write) an `UpdateItem` conditioned on the `record_version` read (or on the item's absence) |
//! | renew                | 1        | conditional `UpdateItem` on the permit's expiry           |
//! | release              | 1        | conditional `UpdateItem` (`REMOVE` of the permit), `ALL_OLD` |
//! | inspect              | 1        | `GetItem` with `ConsistentRead`                           |
//!
//! An acquire needs the read because DynamoDB cannot count a map's live
//! entries inside a condition: the client counts them and writes the whole
//! permit map back only if nobody wrote in between. When somebody did (the
//! condition fails), it goes round again with a fresh read, up to
//! [`ACQUIRE_ROUNDS`] times, then answers a retryable error (heavy
//! contention on one key). A refused acquire writes nothing: it got the
//! holders from its read.
//!
//! A release whose first attempt was applied but whose reply was lost (the
//! SDK retries it) finds the permit gone and answers
//! [`ReleaseOutcome::NotHeld`]: the permit is released either way, as on
//! Redis. (A lock's release tells that case apart; a permit's does not.)
//!
//! A renewal is a second request only when the item's cleanup time is
//! already later than the one this renewal would set (another permit of the
//! key ends later, or its writer's clock is ahead), or the item's fence is
//! ahead of this writer's clock (the cleanup rule below): the refusal (or,
//! on servers that do not return the item with it, a `GetItem` counted by
//! [`DynamoDbStore::holder_reads`]) shows the stored values and the renewal
//! is sent again with a cleanup time that covers them.
//!
//! # Fences
//!
//! As for locks (crate docs, "Fencing"): a grant's token is the stored
//! `fence` + 1; when the item does not exist (a new key, or one DynamoDB TTL
//! deleted) it is the writer's wall clock in microseconds + 1. Release and
//! expiry keep the item and its `fence`, so tokens rise across them. Every
//! write that sets the cleanup time `C` sets it no earlier than the item's
//! fence read as microseconds plus
//! [`cleanup_after`](crate::DynamoDbStoreBuilder::cleanup_after) (an acquire
//! knows the fence it writes; a renewal is conditioned on it, as a lock's
//! is), and no earlier than every live permit's expiry plus `cleanup_after`
//! (an acquire computes it from the permits it writes; a renewal never
//! lowers it). A release does not touch `C`. So tokens stay strictly
//! increasing across deletion by DynamoDB TTL under the lock's one
//! assumption: the client that re-creates a deleted item has a clock less
//! than `cleanup_after` behind AWS's.
//!
//! # Clocks
//!
//! As for locks in [`TakeoverMode::WallClock`]: an acquirer counts a permit
//! as live until its own wall clock passes `expires_at_ms +
//! clock_skew_allowance`, and drops it after; the permit's holder renews or
//! releases it as live only while its clock is before `expires_at_ms`. A
//! refusal's [`Holder::expires_in`] is the time until this client would
//! drop that permit. So at most `limit` permits are live at once provided
//! the clients' wall clocks agree within the allowance.
//!
//! A store in [`TakeoverMode::SkewFree`] has **no semaphores**: every
//! request answers [`LockError::Config`] before anything is sent (the
//! record-version watch of skew-free locks is not implemented for permits).
//! Use a second store in wall-clock mode for semaphores; semaphore items
//! are items of their own, so it may share the table and key prefix with
//! skew-free lock stores.
//!
//! No release notifications: waiters poll with backoff.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lockstore_api::semaphore::{PermitOutcome, PermitRequest, Permits, SemaphoreStore};
use lockstore_api::{
    FencingToken, Holder, LeaseId, LockError, LockKey, ReleaseOutcome, RenewOutcome, Ttl,
    UnexpectedReply,
};

use crate::BACKEND;
use crate::config::TakeoverMode;
use crate::error::bad_item;
use crate::layout;
use crate::store::{
    DynamoDbStore, Item, is_condition_failure, micros, millis, n, new_version, number, s, string,
};

/// The suffix of a semaphore item's partition-key value.
const SEMAPHORE_SUFFIX: &str = "\0sem";

/// DynamoDB's limit on a partition-key value, in bytes.
const MAX_PARTITION_KEY_BYTES: usize = 2048;

/// How often an acquire reads and writes again when the item changed
/// between its read and its conditional write. Each round is a complete
/// attempt; more in a row means heavy contention, a retryable error.
pub const ACQUIRE_ROUNDS: usize = 8;

/// How often a renewal is sent: once, plus once per stored value (cleanup
/// time, fence) its first attempt had to learn, plus one for a change in
/// between.
const RENEW_ROUNDS: usize = 4;

/// A permit entry's expiry: the writer's wall clock + TTL, ms since 1970.
const ENTRY_EXPIRES_AT_MS: &str = "expires_at_ms";
/// A permit entry's fencing token.
const ENTRY_FENCE: &str = "fence";
/// A permit entry's owner label.
const ENTRY_OWNER: &str = "owner";

/// Grant or refresh: the whole permit map (live permits only) and the
/// item's limit, fence, version and cleanup time, in one write.
const ACQUIRE_UPDATE: &str = "SET #permits = :permits, #permit_limit = :limit, #fence = :fence, #record_version = :version, #cleanup = :cleanup_at";
/// The acquire's condition when its read found no item.
const ACQUIRE_IF_ABSENT: &str = "attribute_not_exists(#pk)";
/// The acquire's condition when its read found the item: nobody wrote since.
const ACQUIRE_IF_UNCHANGED: &str = "#record_version = :seen_version";

/// Renew only a permit that is live by the holder's clock (no allowance),
/// under the cleanup rule, and never lowering the cleanup time (another
/// permit may end later).
const RENEW_CONDITION: &str = "#permits.#permit.#expires > :now_ms AND #fence < :fence_cap AND (attribute_not_exists(#cleanup) OR #cleanup <= :cleanup_at)";
/// See [`RENEW_CONDITION`].
const RENEW_UPDATE: &str = "SET #permits.#permit.#expires = :expires_at_ms, #record_version = :version, #cleanup = :cleanup_at";

/// Remove the permit, live or expired (an expired one is removed too, which
/// is harmless); the fence and cleanup time stay.
const RELEASE_CONDITION: &str = "attribute_exists(#permits.#permit)";
/// See [`RELEASE_CONDITION`].
const RELEASE_UPDATE: &str = "REMOVE #permits.#permit SET #record_version = :version";

/// A semaphore item, read.
struct Stored {
    limit: Option<u32>,
    fence: Option<u64>,
    version: Option<String>,
    cleanup_at: Option<u64>,
    permits: Vec<StoredPermit>,
}

/// One permit of a semaphore item.
#[derive(Clone)]
struct StoredPermit {
    id: String,
    owner: String,
    fence: u64,
    expires_at_ms: u64,
}

fn read_item(item: &Item, cleanup_attribute: &str) -> Result<Stored, String> {
    let limit = number(item, layout::PERMIT_LIMIT)?
        .map(|limit| {
            u32::try_from(limit)
                .map_err(|_| format!("{} = {limit} is too large", layout::PERMIT_LIMIT))
        })
        .transpose()?;
    let permits = match item.get(layout::PERMITS) {
        None => Vec::new(),
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(id, entry)| read_permit(id, entry))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "attribute {} should be a map, found {other:?}",
                layout::PERMITS
            ));
        }
    };
    Ok(Stored {
        limit,
        fence: number(item, layout::FENCE)?,
        version: string(item, layout::RECORD_VERSION)?.map(str::to_owned),
        cleanup_at: number(item, cleanup_attribute)?,
        permits,
    })
}

fn read_permit(id: &str, entry: &AttributeValue) -> Result<StoredPermit, String> {
    let AttributeValue::M(entry) = entry else {
        return Err(format!("permit {id:?} should be a map, found {entry:?}"));
    };
    let missing = |name: &str| format!("permit {id:?} lacks {name}");
    Ok(StoredPermit {
        id: id.to_owned(),
        owner: string(entry, ENTRY_OWNER)?.unwrap_or("").to_owned(),
        fence: number(entry, ENTRY_FENCE)?.ok_or_else(|| missing(ENTRY_FENCE))?,
        expires_at_ms: number(entry, ENTRY_EXPIRES_AT_MS)?
            .ok_or_else(|| missing(ENTRY_EXPIRES_AT_MS))?,
    })
}

fn permit_value(permit: &StoredPermit) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        (ENTRY_EXPIRES_AT_MS.to_owned(), n(permit.expires_at_ms)),
        (ENTRY_FENCE.to_owned(), n(permit.fence)),
        (ENTRY_OWNER.to_owned(), s(permit.owner.clone())),
    ]))
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(placeholder, name)| ((*placeholder).to_owned(), (*name).to_owned()))
        .collect()
}

fn values(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    pairs
        .into_iter()
        .map(|(placeholder, value)| (placeholder.to_owned(), value))
        .collect()
}

impl DynamoDbStore {
    /// A skew-free store's semaphores refuse every request (module docs,
    /// "Clocks").
    fn semaphore_mode(&self) -> Result<(), LockError> {
        match self.config().takeover {
            TakeoverMode::WallClock => Ok(()),
            TakeoverMode::SkewFree => Err(LockError::config(
                BACKEND,
                "semaphores on DynamoDB need TakeoverMode::WallClock: they judge permits by wall \
                 clock and skew allowance, which TakeoverMode::SkewFree does not trust, so a \
                 skew-free store has no semaphores; build a second store with \
                 TakeoverMode::WallClock (the default) for them (semaphore items are items of \
                 their own, so it may share the table and key prefix with skew-free lock \
                 stores), on clients whose clocks agree within its clock_skew_allowance",
            )),
        }
    }

    /// The partition-key value of `key`'s semaphore item: the lock item's
    /// ([`DynamoDbStore::item_key`]) followed by `"\0sem"`, which no lock
    /// item or run record has.
    ///
    /// # Errors
    /// [`LockError::Config`] on a store in [`TakeoverMode::SkewFree`] (it has
    /// no semaphores); [`LockError::InvalidArgument`] when key prefix and
    /// key make a value longer than DynamoDB's 2048 bytes.
    pub fn semaphore_item_key(&self, key: &LockKey) -> Result<String, LockError> {
        self.semaphore_mode()?;
        let pk = format!("{}{SEMAPHORE_SUFFIX}", self.item_key(key));
        if pk.len() > MAX_PARTITION_KEY_BYTES {
            return Err(LockError::InvalidArgument {
                name: "key",
                reason: format!(
                    "the semaphore item of {key} would have a {}-byte partition key (key prefix \
                     + key + 5), over DynamoDB's {MAX_PARTITION_KEY_BYTES}; use a shorter key or \
                     prefix",
                    pk.len()
                ),
            });
        }
        Ok(pk)
    }

    /// The time until this client drops `permit` (its expiry plus the skew
    /// allowance, by this client's clock), `None` once it counts no more.
    fn permit_left(&self, permit: &StoredPermit, now: Duration) -> Option<Duration> {
        let dropped_at = Duration::from_millis(permit.expires_at_ms)
            .saturating_add(self.config().clock_skew_allowance);
        dropped_at.checked_sub(now).filter(|left| !left.is_zero())
    }

    /// The permits of `stored` an acquirer still counts, with their time left.
    fn live_permits(&self, stored: &Stored, now: Duration) -> Vec<(StoredPermit, Duration)> {
        stored
            .permits
            .iter()
            .filter_map(|p| self.permit_left(p, now).map(|left| (p.clone(), left)))
            .collect()
    }

    async fn read_semaphore(
        &self,
        key: &LockKey,
        pk: &str,
        what: &str,
    ) -> Result<Option<Stored>, LockError> {
        let Some(item) = self.get(key, pk).await? else {
            return Ok(None);
        };
        read_item(&item, &self.config().cleanup_attribute)
            .map(Some)
            .map_err(|problem| bad_item(what, problem))
    }

    /// Writes `permits` (never empty) as the item's whole permit map with
    /// `fence` as its last token, if the item is still as read. `false`
    /// when it was not.
    async fn write_permits(
        &self,
        request: &PermitRequest,
        pk: &str,
        seen_version: Option<&str>,
        permits: &[StoredPermit],
        fence: u64,
    ) -> Result<bool, LockError> {
        let c = self.config();
        let until = permits
            .iter()
            .map(|p| p.expires_at_ms)
            .max()
            .map_or(Duration::ZERO, Duration::from_millis);
        let cleanup = self.cleanup(until, fence);
        let map: HashMap<String, AttributeValue> = permits
            .iter()
            .map(|p| (p.id.clone(), permit_value(p)))
            .collect();
        let mut used_values = vec![
            (":permits", AttributeValue::M(map)),
            (":limit", n(u64::from(request.limit.get()))),
            (":fence", n(fence)),
            (":version", s(new_version())),
            (":cleanup_at", n(cleanup.at_secs)),
        ];
        let mut used_names = vec![
            ("#permits", layout::PERMITS),
            ("#permit_limit", layout::PERMIT_LIMIT),
            ("#fence", layout::FENCE),
            ("#record_version", layout::RECORD_VERSION),
            ("#cleanup", c.cleanup_attribute.as_str()),
        ];
        let condition = match seen_version {
            Some(version) => {
                used_values.push((":seen_version", s(version)));
                ACQUIRE_IF_UNCHANGED
            }
            None => {
                used_names.push(("#pk", c.partition_key.as_str()));
                ACQUIRE_IF_ABSENT
            }
        };
        let reply = self
            .client()
            .update_item()
            .table_name(&c.table)
            .key(&c.partition_key, s(pk))
            .condition_expression(condition)
            .update_expression(ACQUIRE_UPDATE)
            .set_expression_attribute_names(Some(names(&used_names)))
            .set_expression_attribute_values(Some(values(used_values)))
            .send()
            .await;
        match reply {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(self.map_err("acquire a permit of", &request.key, e)),
        }
    }
}

#[async_trait]
impl SemaphoreStore for DynamoDbStore {
    fn semaphore_backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn try_acquire_permit(
        &self,
        request: &PermitRequest,
    ) -> Result<PermitOutcome, LockError> {
        let pk = self.semaphore_item_key(&request.key)?;
        let what = || format!("acquire a permit of {}", request.key);
        let id = request.permit_id.to_string();
        for _ in 0..ACQUIRE_ROUNDS {
            let stored = self.read_semaphore(&request.key, &pk, &what()).await?;
            // After the read: a permit is never judged by a clock read
            // before the item was.
            let now = self.config().wall_now()?;
            let live = stored
                .as_ref()
                .map(|stored| self.live_permits(stored, now))
                .unwrap_or_default();
            let stored_limit = stored.as_ref().and_then(|s| s.limit);
            if !live.is_empty() && stored_limit != Some(request.limit.get()) {
                return Err(LockError::LimitMismatch {
                    key: request.key.clone(),
                    requested: request.limit.get(),
                    stored: stored_limit.unwrap_or(0),
                });
            }
            let expires_at_ms = millis(now.saturating_add(request.ttl.as_duration()));
            let mine = live.iter().find(|(p, _)| p.id == id).map(|(p, _)| p.fence);
            let (fence, new_fence) = match mine {
                // Our own earlier grant (a retried request): refreshed, same token.
                Some(fence) => (
                    fence,
                    stored.as_ref().and_then(|s| s.fence).unwrap_or(fence),
                ),
                None => {
                    let held = u32::try_from(live.len()).unwrap_or(u32::MAX);
                    if held >= request.limit.get() {
                        let holders = live
                            .iter()
                            .map(|(p, left)| {
                                Holder::new(&p.owner, FencingToken::new(p.fence), *left)
                            })
                            .collect();
                        return Ok(PermitOutcome::Refused(Permits::new(
                            request.limit.get(),
                            holders,
                        )));
                    }
                    // The lock's rule: one above the stored fence, or the
                    // wall clock in µs + 1 for an item that does not exist.
                    let fence = match stored.as_ref().and_then(|s| s.fence) {
                        Some(last) => last.checked_add(1).ok_or_else(|| {
                            bad_item(&what(), format!("fence {last} cannot be raised"))
                        })?,
                        None => micros(now).saturating_add(1),
                    };
                    (fence, fence)
                }
            };
            let mut permits: Vec<StoredPermit> = live
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| p.id != id)
                .collect();
            permits.push(StoredPermit {
                id: id.clone(),
                owner: request.owner.as_str().to_owned(),
                fence,
                expires_at_ms,
            });
            let seen_version = match &stored {
                None => None,
                Some(stored) => Some(stored.version.as_deref().ok_or_else(|| {
                    bad_item(
                        &what(),
                        format!("the semaphore item lacks {}", layout::RECORD_VERSION),
                    )
                })?),
            };
            if self
                .write_permits(request, &pk, seen_version, &permits, new_fence)
                .await?
            {
                return Ok(PermitOutcome::Granted {
                    fence: FencingToken::new(fence),
                });
            }
            // Somebody wrote in between: read again.
        }
        Err(LockError::retryable(
            BACKEND,
            format!(
                "{}: the semaphore item changed under {ACQUIRE_ROUNDS} attempts in a row",
                what()
            ),
            UnexpectedReply("heavy contention on one key".into()),
        ))
    }

    async fn renew_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let pk = self.semaphore_item_key(key)?;
        let what = || format!("renew a permit of {key}");
        let id = permit_id.to_string();
        let c = self.config();
        let mut fence_floor = 0;
        let mut cleanup_floor = 0;
        for _ in 0..RENEW_ROUNDS {
            let now = c.wall_now()?;
            let expires = now.saturating_add(ttl.as_duration());
            let mut cleanup = self.cleanup(expires, fence_floor);
            cleanup.at_secs = cleanup.at_secs.max(cleanup_floor);
            let reply = self
                .client()
                .update_item()
                .table_name(&c.table)
                .key(&c.partition_key, s(pk.as_str()))
                .condition_expression(RENEW_CONDITION)
                .update_expression(RENEW_UPDATE)
                .set_expression_attribute_names(Some(names(&[
                    ("#permits", layout::PERMITS),
                    ("#permit", id.as_str()),
                    ("#expires", ENTRY_EXPIRES_AT_MS),
                    ("#fence", layout::FENCE),
                    ("#record_version", layout::RECORD_VERSION),
                    ("#cleanup", c.cleanup_attribute.as_str()),
                ])))
                .set_expression_attribute_values(Some(values(vec![
                    (":now_ms", n(millis(now))),
                    (":fence_cap", n(cleanup.fence_cap)),
                    (":cleanup_at", n(cleanup.at_secs)),
                    (":expires_at_ms", n(millis(expires))),
                    (":version", s(new_version())),
                ])))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let refusal = match reply {
                Ok(_) => return Ok(RenewOutcome::Renewed),
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.map_err("renew a permit of", key, e)),
            };
            let Some(item) = self.refused_item(key, &pk, &refusal).await? else {
                return Ok(RenewOutcome::Lost);
            };
            let stored =
                read_item(&item, &c.cleanup_attribute).map_err(|p| bad_item(&what(), p))?;
            let live = stored
                .permits
                .iter()
                .any(|p| p.id == id && p.expires_at_ms > millis(now));
            if !live {
                return Ok(RenewOutcome::Lost);
            }
            // Ours and live: refused for the cleanup time. Cover what the
            // item shows and go again.
            if let Some(fence) = stored.fence.filter(|&f| f >= cleanup.fence_cap) {
                fence_floor = fence.saturating_add(1);
            }
            if let Some(at) = stored.cleanup_at.filter(|&at| at > cleanup.at_secs) {
                cleanup_floor = at;
            }
        }
        Err(LockError::retryable(
            BACKEND,
            format!(
                "{}: the semaphore item changed under {RENEW_ROUNDS} attempts in a row",
                what()
            ),
            UnexpectedReply("heavy contention on one key".into()),
        ))
    }

    async fn release_permit(
        &self,
        key: &LockKey,
        permit_id: LeaseId,
    ) -> Result<ReleaseOutcome, LockError> {
        let pk = self.semaphore_item_key(key)?;
        let what = || format!("release a permit of {key}");
        let id = permit_id.to_string();
        let c = self.config();
        let reply = self
            .client()
            .update_item()
            .table_name(&c.table)
            .key(&c.partition_key, s(pk.as_str()))
            .condition_expression(RELEASE_CONDITION)
            .update_expression(RELEASE_UPDATE)
            .set_expression_attribute_names(Some(names(&[
                ("#permits", layout::PERMITS),
                ("#permit", id.as_str()),
                ("#record_version", layout::RECORD_VERSION),
            ])))
            .set_expression_attribute_values(Some(values(vec![(":version", s(new_version()))])))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let old = match reply {
            Ok(out) => out.attributes,
            Err(e) if is_condition_failure(&e) => return Ok(ReleaseOutcome::NotHeld),
            Err(e) => return Err(self.map_err("release a permit of", key, e)),
        };
        let now = c.wall_now()?;
        let stored = old
            .map(|item| read_item(&item, &c.cleanup_attribute))
            .transpose()
            .map_err(|p| bad_item(&what(), p))?;
        // The write removed the permit either way; it released a *live*
        // one only if it had not yet expired by the holder's clock.
        let was_live = stored.is_some_and(|stored| {
            stored
                .permits
                .iter()
                .any(|p| p.id == id && p.expires_at_ms > millis(now))
        });
        Ok(if was_live {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect_permits(&self, key: &LockKey) -> Result<Option<Permits>, LockError> {
        let pk = self.semaphore_item_key(key)?;
        let what = format!("inspect the permits of {key}");
        let Some(stored) = self.read_semaphore(key, &pk, &what).await? else {
            return Ok(None);
        };
        let now = self.config().wall_now()?;
        let live = self.live_permits(&stored, now);
        if live.is_empty() {
            return Ok(None);
        }
        let limit = stored.limit.ok_or_else(|| {
            bad_item(
                &what,
                format!("the semaphore item lacks {}", layout::PERMIT_LIMIT),
            )
        })?;
        let holders = live
            .iter()
            .map(|(p, left)| Holder::new(&p.owner, FencingToken::new(p.fence), *left))
            .collect();
        Ok(Some(Permits::new(limit, holders)))
    }
}
