//! The execution ledger ("run once") on DynamoDB.
//!
//! # Item layout
//!
//! A key's run record is its **own item**, beside the key's lock item: its
//! partition-key value is the lock item's ([`DynamoDbStore::item_key`])
//! followed by `"\0run"`. Lock keys and key prefixes cannot contain NUL, so
//! no lock item has that value and the record never touches the lock.
//!
//! | attribute             | type | meaning                                                   |
//! |-----------------------|------|-----------------------------------------------------------|
//! | `exec_key`            | S    | the key                                                   |
//! | `exec_state`          | S    | `pending`, `running`, `succeeded`, `failed`, `ignored`    |
//! | `exec_status`         | S    | index partition: key prefix, NUL, state, `#`, shard       |
//! | `exec_sort`           | S    | index sort key: `updated_ms` (20 digits), space, key      |
//! | `exec_attempts`       | N    | runs started                                              |
//! | `exec_max_attempts`   | N    | the attempt limit of the last begin                       |
//! | `fence`               | N    | the last run's fencing token                              |
//! | `exec_owner`          | S    | the last run's owner                                      |
//! | `lease_id`, `lease_expires_at_ms`, `lease_ttl_ms` | | the running lease (as a lock's)   |
//! | `exec_result`         | B    | the stored result                                         |
//! | `exec_error_0`..`_4`  | S    | error-history ring, slot `attempt % 5`, JSON              |
//! | `exec_request_hash`   | S    | the request hash                                          |
//! | `exec_created_ms`, `exec_updated_at_ms`, `exec_finished_ms` | N | writer's wall clock |
//! | *cleanup attribute*   | N    | only with a retention, on finished records; and on tombstones |
//!
//! `purge` does not delete a record: it leaves a fence-only **tombstone**,
//! the item with every `exec_*` and `lease_*` attribute removed and `fence`
//! kept (see "Expiry"). Every reader treats an item without `exec_state` as
//! no record: `get` answers `None`, `begin` and `enqueue` start afresh (the
//! fence counting on), `retry` answers `NotFound`, and the sparse index
//! does not hold it (no `exec_status`), so `query` and `purge` never see it.
//!
//! A run key is at most [`MAX_RUN_KEY_BYTES`] (1003) bytes: the index sort
//! key `exec_sort` is 21 bytes plus the key, and DynamoDB refuses index keys
//! over 1024 bytes. Longer keys get [`LockError::InvalidArgument`] before
//! any request.
//!
//! # One request per transition
//!
//! | transition              | requests | what |
//! |-------------------------|----------|------|
//! | begin (started)         | 1 | conditional `UpdateItem`, `ALL_OLD`: the new fence and attempt follow from the old ones, and the old `exec_state` says whether it took over a stuck run |
//! | begin (refused)         | 1 | the same; the record comes back in the refusal (`ALL_OLD`) |
//! | renew_run, finish       | 1 | `UpdateItem` conditioned on the lease id |
//! | get                     | 1 | `GetItem`, consistent |
//! | enqueue, retry          | 1 | conditional `UpdateItem`, `ALL_OLD` on refusal |
//! | query                   | statuses × [`LEDGER_SHARDS`] | `Query` on `exec_status-index`, merged |
//! | purge                   | 2 × [`LEDGER_SHARDS`] queries + one conditional `UpdateItem` per record | leaves the tombstone |
//!
//! Rare second requests, all counted by [`DynamoDbStore::ledger_reads`] or
//! explained: a server that does not return the old item with a refusal
//! (dynalite) is asked with a `GetItem` (counted); a begin retried after a
//! lost reply refreshes its own run with a second `UpdateItem`; a retryable
//! failure on the **last** attempt is refused by the "attempts left"
//! condition and written as `ignored` by a second `UpdateItem` (DynamoDB
//! cannot choose the status inside one update); a retry of a key without a
//! record needs the `GetItem` to tell "absent" from "not returned"; and,
//! with a [retention](crate::DynamoDbStoreBuilder::ledger_retention), a
//! finish refused by the cleanup rule (the record's creator had a clock
//! ahead of the finisher's) is sent again with the cleanup time dated from
//! the fence, as a lock's release is.
//!
//! # Status queries
//!
//! The sparse global secondary index `exec_status-index` (partition
//! `exec_status`, sort `exec_sort`, all attributes projected) holds only run
//! records: lock items have no `exec_status`. Writes are spread over
//! [`LEDGER_SHARDS`] partitions per status (a stable hash of the key), so
//! one status's records do not all land on one index partition; a query
//! asks every shard of every wanted status for one page and merges them by
//! `(updated_at, key)`. A running record whose lease expired is still
//! `running` in the index, so "unfinished" lists it; "stuck" is the running
//! shards filtered by lease expiry on read.
//!
//! The index is eventually consistent on DynamoDB (it is not on emulators):
//! a record changed in the last moment may be listed under its old status
//! or missed by a purge, never deleted while unfinished (the delete is
//! conditional on the item itself).
//!
//! # Clocks
//!
//! As for locks in [`TakeoverMode::WallClock`](crate::TakeoverMode): times
//! are the writing client's wall clock; a running lease is taken over (by
//! `begin`, or requeued by `retry`, or listed as stuck) once this client's
//! clock is past its expiry plus the store's clock-skew allowance, and is
//! renewed only before its expiry by the holder's clock. So at most one run
//! of a key is live provided the clients' clocks agree within the
//! allowance.
//!
//! A store in [`TakeoverMode::SkewFree`](crate::TakeoverMode) has **no
//! ledger**: every ledger request answers
//! [`LockError::Config`] before anything is sent. Its users chose it
//! because they do not trust wall clocks, and the ledger's takeover,
//! stuck listing and retry judge run leases by them (the record-version
//! watch the skew-free locks use is not implemented for runs). Use a second
//! store in wall-clock mode for the ledger; run records are items of their
//! own, so it may share the table and key prefix with skew-free lock
//! stores.
//!
//! # Expiry
//!
//! By default DynamoDB TTL never deletes a run record: no record carries
//! the cleanup attribute, and finished ones (`succeeded`, `ignored`) stay
//! until [`purge`](LedgerStore::purge), so a succeeded key is never run
//! again however long ago it ran. With
//! [`ledger_retention`](crate::DynamoDbStoreBuilder::ledger_retention) the
//! write that finishes a record `succeeded` or `ignored` also sets its
//! cleanup time, and DynamoDB TTL deletes it after that long; `failed`,
//! `pending` and `running` records never have one (`begin`, `enqueue` and
//! `retry` remove it).
//!
//! That cleanup time is dated under the lock items' cleanup rule (crate
//! docs, "Fencing"): the write is
//! conditioned on the record's fence staying below the cleanup time less
//! the retention, in microseconds, and a refusal showing a higher fence (a
//! creator whose clock was ahead) is sent again dated from the fence. A
//! record deleted by TTL makes the key's next run start its fence from the
//! wall clock in microseconds, above every token the deleted record handed
//! out, provided that client's clock is less than the retention behind
//! AWS's.
//!
//! `purge` leaves a tombstone that keeps the fence, so the next run of a
//! purged key counts on from it whatever anyone's clock says. The
//! tombstone gets a cleanup time `cleanup_after` after the later of now and
//! its fence (the same rule, dated from the fence the index showed), so
//! DynamoDB TTL deletes it later, as it deletes a released lock item, with
//! the lock's assumption for the fence after that.
//!
//! # Fences of runs and locks of one key
//!
//! A run's fence is counted on the run record, a lock's on the lock item,
//! both from the writer's microsecond clock when the item is created. Runs
//! of a key strictly increase among themselves (across takeover, retry,
//! purge and deletion by TTL, under the assumptions of "Expiry"), and a run started after
//! a lock item was created is above that lock's tokens so far; but a lock
//! item that is *older* than the run record keeps counting from its own,
//! smaller base. A resource fenced by both a key's locks and its runs should
//! keep the two apart (e.g. fence column per kind), or use one of them.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, ERROR_HISTORY, EnqueueOutcome, Finish, FinishOutcome,
    FinishRequest, LedgerStore, MAX_RESULT_BYTES, Order, PageCursor, RequestHash, RetryOutcome,
    RunError, RunPage, RunQuery, RunRecord, RunStatus, StatusFilter, time_from_unix_millis,
};
use lockstore_api::{
    FencingToken, LeaseId, LockError, LockKey, RenewOutcome, Ttl, UnexpectedReply,
};

use crate::error::{bad_item, map_sdk_error};
use crate::layout;
use crate::ledger_expressions as lx;
use crate::store::{number, string};
use crate::{BACKEND, DynamoDbStore};

type Item = std::collections::HashMap<String, AttributeValue>;

pub mod finish_in_transaction;
pub use finish_in_transaction::RunSuccessItem;

/// How many index partitions each status is spread over.
pub const LEDGER_SHARDS: u32 = 4;

/// DynamoDB's item size limit, in bytes.
pub const DYNAMODB_ITEM_LIMIT: usize = 400 * 1024;

/// The longest partition-key value DynamoDB accepts, in bytes.
const MAX_PARTITION_KEY_BYTES: usize = 2048;

/// The longest sort-key value DynamoDB accepts in an index, in bytes.
const MAX_INDEX_SORT_KEY_BYTES: usize = 1024;

/// The bytes of `exec_sort` before the key: 20 digits and a space.
const SORT_PREFIX_BYTES: usize = 21;

/// The longest run key on DynamoDB, in bytes: a run record's index sort
/// key (`exec_sort`) is 21 bytes plus the key, and DynamoDB refuses a
/// write whose index key is over 1024 bytes. Longer keys (locks take up to
/// [`LockKey::MAX_LEN`]) are refused with [`LockError::InvalidArgument`]
/// before any request.
pub const MAX_RUN_KEY_BYTES: usize = MAX_INDEX_SORT_KEY_BYTES - SORT_PREFIX_BYTES;

/// The suffix of a run record's partition-key value.
const RUN_SUFFIX: &str = "\0run";

/// How many times a begin goes round when the record changed between its
/// write and its reading of the refusal.
const BEGIN_ROUNDS: usize = 8;

/// Values of one request, by placeholder.
struct Values(Vec<(&'static str, AttributeValue)>);

impl Values {
    fn push(&mut self, name: &'static str, value: AttributeValue) {
        self.0.push((name, value));
    }
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A stable hash of the key (FNV-1a), so every client puts a key's record
/// on the same index shard.
fn shard_of(key: &LockKey) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % LEDGER_SHARDS
}

/// The index sort value: fixed-width milliseconds, so string order is
/// `(updated_ms, key)` order.
fn sort_value(updated_ms: u64, key: &str) -> String {
    format!("{updated_ms:020} {key}")
}

fn is_condition_failure<R>(error: &aws_sdk_dynamodb::error::SdkError<UpdateItemError, R>) -> bool {
    error
        .as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

/// What one clock reading makes of a stored lease.
#[derive(Clone, Copy)]
struct Now {
    /// Wall clock, ms since the epoch.
    ms: u64,
    /// The skew allowance in ms.
    allowance_ms: u64,
}

impl Now {
    fn cutoff(self) -> u64 {
        self.ms.saturating_sub(self.allowance_ms)
    }
}

impl DynamoDbStore {
    /// A skew-free store's ledger refuses every request (module docs,
    /// "Clocks").
    fn ledger_mode(&self) -> Result<(), LockError> {
        match self.config().takeover {
            crate::TakeoverMode::WallClock => Ok(()),
            crate::TakeoverMode::SkewFree => Err(LockError::config(
                BACKEND,
                "the execution ledger judges run leases by wall clock and skew allowance, which \
                 TakeoverMode::SkewFree does not trust, so a skew-free store has no ledger; \
                 build a second store with TakeoverMode::WallClock (the default) for the \
                 ledger (run records are items of their own, so it may share the table and key \
                 prefix with skew-free lock stores), on clients whose clocks agree within its \
                 clock_skew_allowance",
            )),
        }
    }

    /// The partition-key value of `key`'s run record, after the checks
    /// every per-key ledger request makes before it is sent.
    fn run_key(&self, key: &LockKey) -> Result<String, LockError> {
        self.ledger_mode()?;
        let len = key.as_str().len();
        if len > MAX_RUN_KEY_BYTES {
            return Err(LockError::InvalidArgument {
                name: "key",
                reason: format!(
                    "a run key on DynamoDB is at most {MAX_RUN_KEY_BYTES} bytes, this one is \
                     {len}: the ledger's index sort key is {SORT_PREFIX_BYTES} bytes plus the \
                     key, and DynamoDB refuses index keys over {MAX_INDEX_SORT_KEY_BYTES} bytes; \
                     use a shorter key (e.g. a digest of the long one)"
                ),
            });
        }
        let pk = format!("{}{RUN_SUFFIX}", self.item_key(key));
        if pk.len() > MAX_PARTITION_KEY_BYTES {
            return Err(LockError::InvalidArgument {
                name: "key",
                reason: format!(
                    "the run record of {key} would have a {}-byte partition key (key prefix + key \
                     + 4), over DynamoDB's {MAX_PARTITION_KEY_BYTES}; use a shorter key or prefix",
                    pk.len()
                ),
            });
        }
        Ok(pk)
    }

    /// The index partition of `state` for `key`.
    fn index_pk(&self, state: RunStatus, key: &LockKey) -> String {
        self.shard_pk(state, shard_of(key))
    }

    fn shard_pk(&self, state: RunStatus, shard: u32) -> String {
        format!("{}\0{}#{shard}", self.config().key_prefix, state.as_str())
    }

    fn now(&self) -> Result<Now, LockError> {
        Ok(Now {
            ms: millis(self.config().wall_now()?),
            allowance_ms: millis(self.config().clock_skew_allowance),
        })
    }

    /// The values most transitions use.
    fn base_values(&self, key: &LockKey, now: Now) -> Values {
        Values(vec![
            (":key", s(key.as_str())),
            (":pending", s("pending")),
            (":running", s("running")),
            (":failed", s("failed")),
            (":ignored", s("ignored")),
            (":now_ms", n(now.ms)),
            (":cutoff", n(now.cutoff())),
            (":sort", s(sort_value(now.ms, key.as_str()))),
            (":zero", n(0)),
            (":one", n(1)),
        ])
    }

    fn ledger_update(
        &self,
        pk: &str,
        condition: &str,
        update: &str,
        values: &Values,
    ) -> UpdateItemFluentBuilder {
        let c = self.config();
        let names = lx::names_for(&[condition, update], &c.partition_key, &c.cleanup_attribute);
        let used = crate::expressions::placeholders(&[condition, update], ':');
        let values: Item = values
            .0
            .iter()
            .filter(|(name, _)| used.contains(name))
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        self.client()
            .update_item()
            .table_name(&c.table)
            .key(&c.partition_key, s(pk))
            .condition_expression(condition)
            .update_expression(update)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    fn ledger_err<E>(
        &self,
        what: &str,
        key: &LockKey,
        error: aws_sdk_dynamodb::error::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> LockError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let c = self.config();
        map_sdk_error(error, &format!("{what} {key}"), &c.table, &c.partition_key)
    }

    async fn read_run(&self, key: &LockKey, pk: &str) -> Result<Option<Item>, LockError> {
        let c = self.config();
        let reply = self
            .client()
            .get_item()
            .table_name(&c.table)
            .key(&c.partition_key, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.ledger_err("get run", key, e))?;
        Ok(reply.item.and_then(record_only))
    }

    /// The record as it was when a conditional write was refused: from the
    /// refusal, or (servers that do not send it) from a counted `GetItem`.
    async fn refused_run(
        &self,
        key: &LockKey,
        pk: &str,
        error: &UpdateItemError,
    ) -> Result<Option<Item>, LockError> {
        if let UpdateItemError::ConditionalCheckFailedException(refusal) = error
            && let Some(item) = refusal.item()
        {
            return Ok(record_only(item.clone()));
        }
        self.count_ledger_read();
        self.read_run(key, pk).await
    }

    fn record_of(&self, what: &str, item: &Item, now: Now) -> Result<RunRecord, LockError> {
        read_record(item, now).map_err(|problem| bad_item(what, problem))
    }

    /// Queries one shard of one status: up to `want` records (after the
    /// filter), in `order`, after `after`.
    async fn query_shard(
        &self,
        index_pk: String,
        query: &RunQuery,
        want: usize,
        now: Now,
    ) -> Result<Vec<(String, RunRecord)>, LockError> {
        let c = self.config();
        let forward = query.order == Order::OldestFirst;
        let mut key_condition = "#exec_status = :index_pk".to_owned();
        let mut values: Item = Item::new();
        values.insert(":index_pk".into(), s(index_pk));
        if let Some(after) = &query.after {
            key_condition.push_str(if forward {
                " AND #exec_sort > :after"
            } else {
                " AND #exec_sort < :after"
            });
            values.insert(
                ":after".into(),
                s(sort_value(after.updated_ms, after.key.as_str())),
            );
        }
        // Stuck runs are filtered here, not by a FilterExpression: the
        // lease is judged by the same code that builds the record.
        let names = lx::names_for(&[&key_condition], &c.partition_key, &c.cleanup_attribute);
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let reply = self
                .client()
                .query()
                .table_name(&c.table)
                .index_name(crate::layout::RESERVED_STATUS_INDEX)
                .key_condition_expression(&key_condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(forward)
                .limit(i32::try_from(want).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_sdk_error(e, "query runs", &c.table, &c.partition_key))?;
            for item in reply.items() {
                let record = self.record_of("query runs", item, now)?;
                if query.filter.matches(&record) {
                    let sort = match item.get("exec_sort") {
                        Some(AttributeValue::S(sort)) => sort.clone(),
                        _ => return Err(bad_item("query runs", "a run record lacks exec_sort")),
                    };
                    found.push((sort, record));
                }
            }
            match reply.last_evaluated_key {
                Some(last) if found.len() < want => start = Some(last),
                _ => break,
            }
        }
        found.truncate(want);
        Ok(found)
    }

    async fn fail_finish(
        &self,
        request: &FinishRequest,
        pk: &str,
        error: &RunError,
        now: Now,
    ) -> Result<FinishOutcome, LockError> {
        let slot = error.slot();
        let slot_placeholder: &'static str = match slot {
            0 => "#exec_error_0",
            1 => "#exec_error_1",
            2 => "#exec_error_2",
            3 => "#exec_error_3",
            _ => "#exec_error_4",
        };
        let mut values = self.base_values(&request.key, now);
        values.push(":lease_id", s(request.lease_id.to_string()));
        values.push(":error", s(error.to_json()));
        let mut states = Vec::new();
        if error.retryable {
            states.push((RunStatus::Failed, lx::HELD_WITH_ATTEMPTS_LEFT));
        }
        states.push((RunStatus::Ignored, lx::HELD));
        let assignment = format!(", {slot_placeholder} = :error");
        for (state, condition) in states {
            let write = FinishWrite {
                state,
                condition,
                assignments: &assignment,
                remove: lx::REMOVE_LEASE,
                result_size: None,
            };
            match self.finish_write(request, pk, &write, &values, now).await? {
                Written::Done => return Ok(FinishOutcome::Finished(state)),
                Written::NotHeld => return Ok(FinishOutcome::NotHeld),
                // Still ours, so the attempts were used up: ignored.
                Written::StillHeld => {}
            }
        }
        Ok(FinishOutcome::NotHeld)
    }

    /// One finishing write. A final state under a
    /// [`ledger_retention`](crate::DynamoDbStoreBuilder::ledger_retention)
    /// also sets the cleanup time, under the cleanup rule: a refusal that
    /// shows our run with a fence ahead of the cleanup time goes round once
    /// more with the time dated from the fence. Without a retention a
    /// finished record has no cleanup time and DynamoDB TTL never deletes
    /// it.
    async fn finish_write(
        &self,
        request: &FinishRequest,
        pk: &str,
        write: &FinishWrite<'_>,
        values: &Values,
        now: Now,
    ) -> Result<Written, LockError> {
        let state = write.state;
        let retention = self
            .config()
            .ledger_retention
            .filter(|_| state.is_finished());
        let mut fence_floor = 0;
        // A second round only when the cleanup rule refused the first.
        for _ in 0..2 {
            let mut values = Values(values.0.clone());
            values.push(":state", s(state.as_str()));
            values.push(":index_pk", s(self.index_pk(state, &request.key)));
            let mut update = format!("{}{}", lx::FINISH_SET, write.assignments);
            let mut condition = write.condition.to_owned();
            let cap = retention.map(|retention| {
                let cleanup =
                    self.cleanup_after_delay(Duration::from_millis(now.ms), fence_floor, retention);
                values.push(":cleanup_at", n(cleanup.at_secs));
                values.push(":fence_cap", n(cleanup.fence_cap));
                update.push_str(", #cleanup = :cleanup_at");
                condition.push_str(" AND ");
                condition.push_str(lx::FENCE_UNDER_CAP);
                cleanup.fence_cap
            });
            update.push_str(" REMOVE ");
            update.push_str(write.remove);
            // The refused record is read only to tell a last attempt or the
            // cleanup rule from a lost lease.
            let read_refusal = cap.is_some() || state == RunStatus::Failed;
            let returned = if read_refusal {
                ReturnValuesOnConditionCheckFailure::AllOld
            } else {
                ReturnValuesOnConditionCheckFailure::None
            };
            let reply = self
                .ledger_update(pk, &condition, &update, &values)
                .return_values_on_condition_check_failure(returned)
                .send()
                .await;
            let refusal = match reply {
                Ok(_) => return Ok(Written::Done),
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => {
                    let what = if state == RunStatus::Succeeded {
                        "succeed run"
                    } else {
                        "fail run"
                    };
                    return Err(write
                        .result_size
                        .and_then(|size| too_large(&e, size))
                        .unwrap_or_else(|| self.ledger_err(what, &request.key, e)));
                }
            };
            if !read_refusal {
                return Ok(Written::NotHeld);
            }
            let Some(item) = self.refused_run(&request.key, pk, &refusal).await? else {
                return Ok(Written::NotHeld);
            };
            if !held_by(&item, request.lease_id) {
                return Ok(Written::NotHeld);
            }
            let fence = number(&item, layout::FENCE)
                .map_err(|problem| bad_item(&format!("finish run {}", request.key), problem))?;
            match (cap, fence) {
                // The record's creator had a clock ahead of ours.
                (Some(cap), Some(fence)) if fence >= cap => fence_floor = fence.saturating_add(1),
                _ => return Ok(Written::StillHeld),
            }
        }
        Ok(Written::StillHeld)
    }
}

/// One finishing write's parts (see [`DynamoDbStore::finish_write`]).
struct FinishWrite<'a> {
    state: RunStatus,
    condition: &'static str,
    /// Appended to [`lx::FINISH_SET`]: the result or the error.
    assignments: &'a str,
    /// The `REMOVE` list.
    remove: &'a str,
    /// A success's result size, for the item-size error.
    result_size: Option<usize>,
}

/// What a finishing write did.
enum Written {
    Done,
    /// The record is no longer this run's.
    NotHeld,
    /// Refused although the run still holds the record: a failure on the
    /// last attempt (written as `ignored` next).
    StillHeld,
}

/// `item` if it is a run record, `None` for the fence-only tombstone a
/// purge leaves (no `exec_state`), which every reader treats as absent.
fn record_only(item: Item) -> Option<Item> {
    item.contains_key("exec_state").then_some(item)
}

fn held_by(item: &Item, lease_id: LeaseId) -> bool {
    matches!(item.get("exec_state"), Some(AttributeValue::S(state)) if state == "running")
        && matches!(item.get("lease_id"), Some(AttributeValue::S(id)) if *id == lease_id.to_string())
}

fn count(value: Option<u64>) -> u32 {
    value.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// A run record from its item, with the lease judged at `now`.
fn read_record(item: &Item, now: Now) -> Result<RunRecord, String> {
    let key = string(item, "exec_key")?.ok_or("a run record lacks exec_key")?;
    let key = LockKey::new(key).map_err(|e| format!("exec_key is not a valid key: {e}"))?;
    let status: RunStatus = string(item, "exec_state")?
        .ok_or("a run record lacks exec_state")?
        .parse()
        .map_err(|e: LockError| e.to_string())?;
    let lease_expires_in = if status == RunStatus::Running && item.contains_key("lease_id") {
        let expires = number(item, "lease_expires_at_ms")?.unwrap_or(0);
        let ttl = number(item, "lease_ttl_ms")?.unwrap_or(u64::MAX);
        // Live until this client could take it over; never more than the
        // lease's own TTL (the allowance is not the holder's time).
        let takeover_at = expires.saturating_add(now.allowance_ms);
        (takeover_at > now.ms).then(|| Duration::from_millis((takeover_at - now.ms).min(ttl)))
    } else {
        None
    };
    let result = match item.get("exec_result") {
        None => None,
        Some(AttributeValue::B(blob)) => Some(blob.as_ref().to_vec()),
        Some(other) => return Err(format!("exec_result should be binary, found {other:?}")),
    };
    let mut errors = Vec::new();
    for slot in 0..ERROR_HISTORY {
        if let Some(text) = string(item, &format!("exec_error_{slot}"))? {
            errors.push(RunError::from_json(BACKEND, text).map_err(|e| e.to_string())?);
        }
    }
    let request_hash = string(item, "exec_request_hash")?
        .map(RequestHash::new)
        .transpose()
        .map_err(|e| e.to_string())?;
    let updated = number(item, "exec_updated_at_ms")?.unwrap_or(0);
    Ok(RunRecord {
        key,
        status,
        attempts: count(number(item, "exec_attempts")?),
        max_attempts: count(number(item, "exec_max_attempts")?).max(1),
        fence: number(item, "fence")?.map(FencingToken::new),
        owner: string(item, "exec_owner")?.map(str::to_owned),
        lease_expires_in,
        result,
        errors: RunError::history(errors),
        request_hash,
        created_at: time_from_unix_millis(number(item, "exec_created_ms")?.unwrap_or(updated)),
        updated_at: time_from_unix_millis(updated),
        finished_at: number(item, "exec_finished_ms")?.map(time_from_unix_millis),
    })
}

/// Whether this client would start `record` for `request` (used to go round
/// when a record read after a refusal had changed since).
fn startable(record: &RunRecord, request: &BeginRequest) -> bool {
    let hashes_agree = match (&record.request_hash, &request.request_hash) {
        (Some(stored), Some(given)) => stored == given,
        _ => true,
    };
    let status_allows = match record.status {
        RunStatus::Pending => true,
        RunStatus::Failed => record.attempts < request.max_attempts,
        RunStatus::Running => {
            record.lease_expires_in.is_none() && record.attempts < request.max_attempts
        }
        RunStatus::Succeeded | RunStatus::Ignored => false,
    };
    hashes_agree && status_allows
}

/// The answer to a begin whose `BEGIN_UPDATE` was applied, from the item's
/// old image (`ALL_OLD`; not `UPDATED_OLD`, which may leave out an
/// attribute the update did not change, as moto does for a `running` state
/// set to `running` again). The update computes `fence = if_not_exists(fence, :fence_base) + 1` and
/// `exec_attempts = if_not_exists(exec_attempts, 0) + 1` on that image, so
/// the new values follow from it; keep the two in step. The old
/// `exec_state` says whether the start took over a stuck run: the condition
/// (`BEGIN_STARTABLE`) lets a `running` record through only once its lease
/// expired and under another lease id. A new key or a tombstone has none.
fn started_over(
    old: Option<&Item>,
    fence_base: u64,
    what: &str,
) -> Result<BeginOutcome, LockError> {
    let bad = |problem| bad_item(what, problem);
    let (fence, attempts, state) = match old {
        Some(old) => (
            number(old, layout::FENCE).map_err(bad)?,
            number(old, "exec_attempts").map_err(bad)?,
            string(old, "exec_state").map_err(bad)?,
        ),
        None => (None, None, None),
    };
    Ok(BeginOutcome::Started {
        fence: FencingToken::new(fence.unwrap_or(fence_base).saturating_add(1)),
        attempt: count(Some(attempts.unwrap_or(0).saturating_add(1))),
        took_over: state == Some("running"),
    })
}

/// The answer to a begin that found its own run (a retried request) and
/// refreshed it, from the item's new image: never a takeover.
fn started_from(attributes: Option<&Item>, what: &str) -> Result<BeginOutcome, LockError> {
    let read = |name: &str| {
        attributes
            .map(|a| number(a, name))
            .transpose()
            .map_err(|problem| bad_item(what, problem))
            .map(Option::flatten)
    };
    match (read("fence")?, read("exec_attempts")?) {
        (Some(fence), Some(attempt)) => Ok(BeginOutcome::Started {
            fence: FencingToken::new(fence),
            attempt: count(Some(attempt)),
            took_over: false,
        }),
        _ => Err(LockError::retryable(
            BACKEND,
            format!(
                "{what}: the reply did not include the fencing token; retry with the same lease id"
            ),
            UnexpectedReply("UpdateItem reply without fence or exec_attempts".into()),
        )),
    }
}

/// An item-size refusal, as the typed error.
fn too_large<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
    size: usize,
) -> Option<LockError> {
    let service = error.as_service_error()?;
    let about_size = service.code() == Some("ValidationException")
        && service
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("item size"));
    about_size.then_some(LockError::ResultTooLarge {
        size,
        limit: DYNAMODB_ITEM_LIMIT,
    })
}

#[async_trait]
impl LedgerStore for DynamoDbStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        let pk = self.run_key(&request.key)?;
        let what = format!("begin {}", request.key);
        for _ in 0..BEGIN_ROUNDS {
            let now = self.now()?;
            let wall = self.config().wall_now()?;
            let mut values = self.base_values(&request.key, now);
            let expires = Duration::from_millis(now.ms) + request.ttl.as_duration();
            values.push(
                ":index_pk",
                s(self.index_pk(RunStatus::Running, &request.key)),
            );
            values.push(":max", n(u64::from(request.max_attempts)));
            let fence_base = u64::try_from(wall.as_micros()).unwrap_or(u64::MAX);
            values.push(":fence_base", n(fence_base));
            values.push(":owner", s(request.owner.as_str()));
            values.push(":lease_id", s(request.lease_id.to_string()));
            values.push(":expires_at_ms", n(millis(expires)));
            values.push(":ttl_ms", n(request.ttl.as_millis()));
            let mut condition = "attribute_not_exists(#pk) OR ".to_owned();
            let mut update = lx::BEGIN_UPDATE.to_owned();
            if let Some(hash) = &request.request_hash {
                values.push(":hash", s(hash.as_str()));
                condition.push_str(&format!(
                    "({} AND {})",
                    lx::BEGIN_HASH_AGREES,
                    lx::BEGIN_STARTABLE
                ));
                update.push_str(lx::BEGIN_SET_HASH);
            } else {
                condition.push_str(lx::BEGIN_STARTABLE);
            }
            update.push_str(lx::REMOVE_CLEANUP);
            let reply = self
                .ledger_update(&pk, &condition, &update, &values)
                .return_values(ReturnValue::AllOld)
                .send()
                .await;
            let refusal = match reply {
                Ok(out) => return started_over(out.attributes(), fence_base, &what),
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.ledger_err("begin", &request.key, e)),
            };
            let Some(item) = self.refused_run(&request.key, &pk, &refusal).await? else {
                continue; // deleted in between: go round
            };
            if held_by(&item, request.lease_id) {
                // Our own run (a retried request): refresh, keep the fence.
                let reply = self
                    .ledger_update(&pk, lx::HELD, lx::REFRESH_UPDATE, &values)
                    .return_values(ReturnValue::AllNew)
                    .send()
                    .await;
                match reply {
                    Ok(out) => return started_from(out.attributes(), &what),
                    Err(e) if is_condition_failure(&e) => continue,
                    Err(e) => return Err(self.ledger_err("begin", &request.key, e)),
                }
            }
            let record = self.record_of(&what, &item, self.now()?)?;
            if startable(&record, request) {
                // Its lease expired just now: a fresh attempt takes over.
                continue;
            }
            return Ok(BeginOutcome::Existing(record));
        }
        Err(LockError::retryable(
            BACKEND,
            format!("{what}: the run record changed under {BEGIN_ROUNDS} attempts in a row"),
            UnexpectedReply("heavy contention on one key".into()),
        ))
    }

    async fn renew_run(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let pk = self.run_key(key)?;
        let now = self.now()?;
        let mut values = self.base_values(key, now);
        values.push(":lease_id", s(lease_id.to_string()));
        values.push(
            ":expires_at_ms",
            n(millis(Duration::from_millis(now.ms) + ttl.as_duration())),
        );
        values.push(":ttl_ms", n(ttl.as_millis()));
        let reply = self
            .ledger_update(&pk, lx::RENEW_CONDITION, lx::REFRESH_UPDATE, &values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::None)
            .send()
            .await;
        match reply {
            Ok(_) => Ok(RenewOutcome::Renewed),
            Err(e) if is_condition_failure(&e) => Ok(RenewOutcome::Lost),
            Err(e) => Err(self.ledger_err("renew run", key, e)),
        }
    }

    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        let pk = self.run_key(&request.key)?;
        let now = self.now()?;
        let result = match &request.finish {
            Finish::Failed { error } => return self.fail_finish(request, &pk, error, now).await,
            Finish::Succeeded { result } => result,
        };
        let size = result.as_ref().map_or(0, Vec::len);
        if size > MAX_RESULT_BYTES {
            return Err(LockError::ResultTooLarge {
                size,
                limit: MAX_RESULT_BYTES,
            });
        }
        let mut values = self.base_values(&request.key, now);
        values.push(":lease_id", s(request.lease_id.to_string()));
        let mut assignments = String::new();
        let mut remove = lx::REMOVE_LEASE.to_owned();
        match result {
            Some(bytes) => {
                values.push(":result", AttributeValue::B(Blob::new(bytes.clone())));
                assignments.push_str(", #exec_result = :result");
            }
            None => remove.push_str(", #exec_result"),
        }
        let write = FinishWrite {
            state: RunStatus::Succeeded,
            condition: lx::HELD,
            assignments: &assignments,
            remove: &remove,
            result_size: Some(size),
        };
        Ok(
            match self
                .finish_write(request, &pk, &write, &values, now)
                .await?
            {
                Written::Done => FinishOutcome::Finished(RunStatus::Succeeded),
                Written::NotHeld | Written::StillHeld => FinishOutcome::NotHeld,
            },
        )
    }

    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError> {
        let pk = self.run_key(key)?;
        let item = self.read_run(key, &pk).await?;
        let now = self.now()?;
        item.map(|item| self.record_of(&format!("get run {key}"), &item, now))
            .transpose()
    }

    async fn enqueue(
        &self,
        key: &LockKey,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        let pk = self.run_key(key)?;
        for _ in 0..BEGIN_ROUNDS {
            let now = self.now()?;
            let mut values = self.base_values(key, now);
            values.push(":index_pk", s(self.index_pk(RunStatus::Pending, key)));
            let mut update = lx::ENQUEUE_UPDATE.to_owned();
            if let Some(hash) = request_hash {
                values.push(":hash", s(hash.as_str()));
                update.push_str(", #exec_request_hash = :hash");
            }
            update.push_str(lx::REMOVE_CLEANUP);
            let reply = self
                .ledger_update(&pk, lx::ENQUEUE_CONDITION, &update, &values)
                .send()
                .await;
            let refusal = match reply {
                Ok(_) => return Ok(EnqueueOutcome::Created),
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.ledger_err("enqueue", key, e)),
            };
            if let Some(item) = self.refused_run(key, &pk, &refusal).await? {
                let record = self.record_of(&format!("enqueue {key}"), &item, now)?;
                return Ok(EnqueueOutcome::Exists(record.status));
            }
        }
        Err(LockError::retryable(
            BACKEND,
            format!("enqueue {key}: the run record changed under {BEGIN_ROUNDS} attempts in a row"),
            UnexpectedReply("heavy contention on one key".into()),
        ))
    }

    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        let pk = self.run_key(key)?;
        let now = self.now()?;
        let mut values = self.base_values(key, now);
        values.push(":index_pk", s(self.index_pk(RunStatus::Pending, key)));
        let reply = self
            .ledger_update(&pk, lx::RETRY_CONDITION, lx::RETRY_UPDATE, &values)
            .send()
            .await;
        let refusal = match reply {
            Ok(_) => return Ok(RetryOutcome::Requeued),
            Err(e) if is_condition_failure(&e) => e.into_service_error(),
            Err(e) => return Err(self.ledger_err("retry", key, e)),
        };
        Ok(match self.refused_run(key, &pk, &refusal).await? {
            None => RetryOutcome::NotFound,
            Some(item) => {
                let record = self.record_of(&format!("retry {key}"), &item, now)?;
                RetryOutcome::Unchanged(record.status)
            }
        })
    }

    async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        self.ledger_mode()?;
        query.validate()?;
        let now = self.now()?;
        let statuses: Vec<RunStatus> = match query.filter {
            StatusFilter::Is(status) => vec![status],
            StatusFilter::Unfinished => {
                vec![RunStatus::Pending, RunStatus::Running, RunStatus::Failed]
            }
            StatusFilter::Stuck => vec![RunStatus::Running],
            StatusFilter::All => RunStatus::ALL.to_vec(),
        };
        let want = query.limit as usize + 1;
        let mut found = Vec::new();
        for status in statuses {
            for shard in 0..LEDGER_SHARDS {
                let index_pk = self.shard_pk(status, shard);
                found.extend(self.query_shard(index_pk, query, want, now).await?);
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        if query.order == Order::NewestFirst {
            found.reverse();
        }
        let mut records: Vec<RunRecord> = found.into_iter().map(|(_, r)| r).collect();
        let limit = query.limit as usize;
        let next = (records.len() > limit).then(|| PageCursor::after(&records[limit - 1]));
        records.truncate(limit);
        Ok(RunPage { records, next })
    }

    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        self.ledger_mode()?;
        let c = self.config();
        let now = self.now()?;
        let cutoff_ms = now.ms.saturating_sub(millis(older_than));
        let bound = format!("{:020}", cutoff_ms.saturating_add(1));
        let mut purged = 0;
        for state in [RunStatus::Succeeded, RunStatus::Ignored] {
            for shard in 0..LEDGER_SHARDS {
                let mut start: Option<Item> = None;
                loop {
                    let key_condition = "#exec_status = :index_pk AND #exec_sort < :bound";
                    let reply = self
                        .client()
                        .query()
                        .table_name(&c.table)
                        .index_name(crate::layout::RESERVED_STATUS_INDEX)
                        .key_condition_expression(key_condition)
                        .set_expression_attribute_names(Some(lx::names_for(
                            &[key_condition],
                            &c.partition_key,
                            &c.cleanup_attribute,
                        )))
                        .expression_attribute_values(":index_pk", s(self.shard_pk(state, shard)))
                        .expression_attribute_values(":bound", s(bound.clone()))
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| map_sdk_error(e, "purge runs", &c.table, &c.partition_key))?;
                    for item in reply.items() {
                        if self.purge_one(item, state, now, cutoff_ms).await? {
                            purged += 1;
                        }
                    }
                    match reply.last_evaluated_key {
                        Some(last) => start = Some(last),
                        None => break,
                    }
                }
            }
        }
        Ok(purged)
    }
}

impl DynamoDbStore {
    /// Turns one finished record the index listed into its fence-only
    /// tombstone ([`lx::PURGE_UPDATE`]), if it is still `state` and older
    /// than the cutoff. Says whether it did.
    async fn purge_one(
        &self,
        item: &Item,
        state: RunStatus,
        now: Now,
        cutoff_ms: u64,
    ) -> Result<bool, LockError> {
        let c = self.config();
        let Some(AttributeValue::S(pk)) = item.get(&c.partition_key) else {
            return Ok(false);
        };
        let fence = number(item, layout::FENCE)
            .map_err(|problem| bad_item("purge runs", problem))?
            .unwrap_or(0);
        // Dated from the fence the index showed, so one request suffices
        // whatever the clock of the record's creator.
        let cleanup = self.cleanup_after_delay(
            Duration::from_millis(now.ms),
            fence.saturating_add(1),
            c.cleanup_after,
        );
        let values = Values(vec![
            (":state", s(state.as_str())),
            (":cutoff_ms", n(cutoff_ms)),
            (":fence_cap", n(cleanup.fence_cap)),
            (":cleanup_at", n(cleanup.at_secs)),
        ]);
        let outcome = self
            .ledger_update(pk, lx::PURGE_CONDITION, lx::PURGE_UPDATE, &values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::None)
            .send()
            .await;
        match outcome {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(map_sdk_error(e, "purge runs", &c.table, &c.partition_key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_values_order_by_time_then_key() {
        let mut v = vec![
            sort_value(20, "a"),
            sort_value(3, "z"),
            sort_value(3, "b"),
            sort_value(100, "a"),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                sort_value(3, "b"),
                sort_value(3, "z"),
                sort_value(20, "a"),
                sort_value(100, "a")
            ]
        );
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let k = LockKey::new("etl/2026-11-23").unwrap();
        assert_eq!(shard_of(&k), shard_of(&k.clone()));
        assert!(
            (0..200).all(|i| shard_of(&LockKey::new(format!("k{i}")).unwrap()) < LEDGER_SHARDS)
        );
    }
}
