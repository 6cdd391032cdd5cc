//! The execution ledger ("run once") on Redis: [`LedgerStore`] for
//! [`RedisStore`]. Every transition is one `EVALSHA` of a script in
//! `src/lua/ledger_*.lua`.
//!
//! # Keys and cluster slots
//!
//! A namespace (key prefix) keeps its ledger under one hash tag,
//! `<prefix>{ledger}`, followed by a NUL byte (`\0` below):
//!
//! | key                                  | holds                                        |
//! |--------------------------------------|----------------------------------------------|
//! | `<prefix>{ledger}\0run:<key>`        | the record of `<key>`, a hash                |
//! | `<prefix>{ledger}\0status:<status>`  | sorted set of keys, score = `updated_at` ms  |
//! | `<prefix>{ledger}\0fence-hw`         | the largest fence of a purged or expiring record |
//!
//! The NUL keeps the ledger apart from the locks. A lock's record is
//! `<prefix>{<lock key>}`, and lock keys may contain braces: without it,
//! the lock `ledger}:run:job` would be `<prefix>{ledger}:run:job}`, the
//! run record of the key `job}`, and an acquire would rewrite that record's
//! fence and give it an expiry. A lock key cannot contain a NUL
//! ([`LockKey`] refuses it), and a prefix contains no brace, so no lock's
//! key (nor any other key of the namespace's locks) has one, while every
//! ledger key does. The hash tag is still `ledger` (the text between the
//! first `{` and the next `}`), so the whole ledger stays in one slot.
//!
//! The status sets are what make "unfinished, oldest first" a range read
//! instead of a scan, and they are written by the same script as the
//! record, so they never drift. A script may only touch keys of one
//! cluster slot, so the hash tag puts a namespace's whole ledger in one
//! slot: that is the price of one-script transitions (the alternative,
//! per-key slots with sharded indexes, would need a second, non-atomic
//! write per transition, and indexes could drift). The tag is the literal
//! `ledger` (a key prefix may not contain braces), so on a Redis Cluster
//! the ledgers of *all* namespaces share that one slot, and one primary;
//! several prefixes do not spread them. A ledger holds one record per unit
//! of *work*, not per request, so one slot is acceptable for most uses; a
//! ledger too big or busy for one primary needs a layout with the prefix
//! inside the tag (not built: it would move existing records).
//!
//! # Fences and times
//!
//! All times come from the server's `TIME`. A run's fence is
//! `max(last fence of the key + 1, server time in µs, high-water + 1)`:
//! the scheme locks use, plus the high-water that purge (and a finish that
//! sets an expiry) raises to the fences it lets go. Fences therefore
//! increase per key across takeover, retry, purge, retention expiry and a
//! restart without persistence (given a server clock that does not go
//! backwards); and since the lock's tokens follow the same clock, a run's
//! token is above the lock tokens issued before it.
//!
//! # Retention: finished records expire
//!
//! By default records are deleted by [`LedgerStore::purge`] only. With
//! [`ledger_retention`](crate::RedisStoreBuilder::ledger_retention) the
//! finish script also sets `PEXPIRE` on a record that ends `succeeded` or
//! `ignored`, so Redis deletes it by itself after that long; `begin` and
//! `retry` (`PERSIST`) take the expiry off a record that goes back to work.
//! Before setting the expiry, the script raises the fence high-water to the
//! record's fence, because the deletion itself runs no script: the key's
//! next run still gets a larger fence. The status-set entry of an expired
//! record is left behind (expiry cannot touch another key); `query` and
//! `purge` skip such entries and remove them, and a new record for the key
//! removes its stale entry when it is created.
//!
//! # Purge in batches
//!
//! `purge` deletes at most
//! [`purge_batch_size`](crate::RedisStoreBuilder::purge_batch_size) records
//! per script call and calls again until none are left, so a purge of a big
//! ledger leaves room for other commands between batches instead of
//! blocking the server (a script blocks it) for the whole purge.
//!
//! # Stuck runs in batches
//!
//! A run is stuck when its lease has expired, which depends on the time, so
//! no set holds the stuck ones. `query` with [`StatusFilter::Stuck`] walks
//! the running set in the query's order, examining at most
//! [`stuck_scan_batch_size`](crate::RedisStoreBuilder::stuck_scan_batch_size)
//! entries per script call and calling again from where it stopped, until
//! it has its page or the set ends. Many live runs (none stuck) cost
//! several short scripts, not one that holds the server for the whole set.
//!
//! # Waking waiters
//!
//! `finish` (and `retry` of a stuck run) publishes `\0run:<key>` on the
//! store's release channel; the existing listener wakes the waiters
//! registered for that text. A lock key cannot contain a NUL, so no lock
//! key is that text, and lock and run waiters never wake each other.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use lockstore_api::ledger::{
    BeginOutcome, BeginRequest, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, LedgerStore,
    Order, PageCursor, RequestHash, RetryOutcome, RunError, RunPage, RunQuery, RunRecord,
    RunStatus, StatusFilter, time_from_unix_millis,
};
use lockstore_api::{FencingToken, LeaseId, LockError, LockKey, ReleaseSignal, RenewOutcome, Ttl};
use redis::{Script, Value};

use crate::error::{BACKEND, command_error, unexpected_reply};
use crate::store::RedisStore;

macro_rules! ledger_script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/ledger_common.lua"),
                include_str!($file)
            ))
        })
    };
}

static BEGIN: LazyLock<Script> = ledger_script!("lua/ledger_begin.lua");
static RENEW: LazyLock<Script> = ledger_script!("lua/ledger_renew.lua");
static FINISH: LazyLock<Script> = ledger_script!("lua/ledger_finish.lua");
static GET: LazyLock<Script> = ledger_script!("lua/ledger_get.lua");
static ENQUEUE: LazyLock<Script> = ledger_script!("lua/ledger_enqueue.lua");
static RETRY: LazyLock<Script> = ledger_script!("lua/ledger_retry.lua");
static QUERY: LazyLock<Script> = ledger_script!("lua/ledger_query.lua");
static PURGE: LazyLock<Script> = ledger_script!("lua/ledger_purge.lua");
static SCAN_STUCK: LazyLock<Script> = ledger_script!("lua/ledger_scan_stuck.lua");

/// The message published when a run of `key` ends: a NUL first, which no
/// lock key (the message of a release) contains.
fn finish_message(key: &LockKey) -> String {
    format!("\0run:{}", key.as_str())
}

impl RedisStore {
    /// `<prefix>{ledger}\0`: the hash tag, then the NUL that no lock's key
    /// contains (see "Keys and cluster slots").
    fn ledger_base(&self) -> String {
        format!("{}{{ledger}}\0", self.key_prefix())
    }

    /// The Redis key of `key`'s ledger record:
    /// `<prefix>{ledger}\0run:<key>` (with a NUL byte, so no lock's record
    /// key is ever one).
    pub fn run_record_key(&self, key: &LockKey) -> String {
        format!("{}{}", self.run_record_prefix(), key.as_str())
    }

    /// The Redis key of the namespace's sorted set of records in `status`:
    /// `<prefix>{ledger}\0status:<status>`.
    pub fn run_status_key(&self, status: RunStatus) -> String {
        format!("{}status:{}", self.ledger_base(), status.as_str())
    }

    fn run_record_prefix(&self) -> String {
        format!("{}run:", self.ledger_base())
    }

    /// The scripts' KEYS: five status sets, the high-water, and optionally
    /// the record.
    fn ledger_invocation<'a>(
        &self,
        script: &'a Script,
        record: Option<&LockKey>,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for status in RunStatus::ALL {
            invocation.key(self.run_status_key(status));
        }
        invocation.key(format!("{}fence-hw", self.ledger_base()));
        if let Some(key) = record {
            invocation.key(self.run_record_key(key));
        }
        invocation
    }

    async fn run_script(
        &self,
        doing: impl Fn() -> String,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, LockError> {
        let mut connection = self.connection();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|err| command_error(&doing(), err))
    }
}

#[async_trait]
impl LedgerStore for RedisStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError> {
        let doing = || format!("begin a run of {:?}", request.key.as_str());
        let mut invocation = self.ledger_invocation(&BEGIN, Some(&request.key));
        invocation
            .arg(request.key.as_str())
            .arg(request.lease_id.to_string())
            .arg(request.owner.as_str())
            .arg(request.ttl.as_millis())
            .arg(request.max_attempts)
            .arg(
                request
                    .request_hash
                    .as_ref()
                    .map_or("", RequestHash::as_str),
            );
        let reply = self.run_script(doing, invocation).await?;
        let bad = || unexpected_reply(&doing(), &reply);
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        match items.as_slice() {
            [status, fence, attempt, took_over] if int(status) == Some(1) => {
                Ok(BeginOutcome::Started {
                    fence: FencingToken::new(uint(fence).ok_or_else(bad)?),
                    attempt: u32::try_from(uint(attempt).ok_or_else(bad)?).map_err(|_| bad())?,
                    took_over: match int(took_over) {
                        Some(0) => false,
                        Some(1) => true,
                        _ => return Err(bad()),
                    },
                })
            }
            [status, now, fields] if int(status) == Some(0) => {
                let record = parse_record(&request.key, now, fields)
                    .and_then(|r| r.ok_or_else(|| "no record".to_owned()))
                    .map_err(|why| record_error(&doing(), &why))?;
                Ok(BeginOutcome::Existing(record))
            }
            _ => Err(bad()),
        }
    }

    async fn renew_run(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let doing = || format!("renew the run of {:?}", key.as_str());
        let mut invocation = self.ledger_invocation(&RENEW, Some(key));
        invocation.arg(lease_id.to_string()).arg(ttl.as_millis());
        let reply = self.run_script(doing, invocation).await?;
        match int(&reply) {
            Some(1) => Ok(RenewOutcome::Renewed),
            Some(0) => Ok(RenewOutcome::Lost),
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError> {
        request.validate()?;
        let doing = || format!("finish the run of {:?}", request.key.as_str());
        let mut invocation = self.ledger_invocation(&FINISH, Some(&request.key));
        invocation
            .arg(request.key.as_str())
            .arg(request.lease_id.to_string());
        match &request.finish {
            Finish::Succeeded { result } => {
                invocation
                    .arg("s")
                    .arg(if result.is_some() { "1" } else { "0" })
                    .arg(result.as_deref().unwrap_or_default())
                    .arg("")
                    .arg(0)
                    .arg("0");
            }
            Finish::Failed { error } => {
                invocation
                    .arg("f")
                    .arg("0")
                    .arg("")
                    .arg(error.to_json())
                    .arg(error.slot())
                    .arg(if error.retryable { "1" } else { "0" });
            }
        }
        invocation
            .arg(self.release_channel())
            .arg(finish_message(&request.key))
            .arg(self.ledger_retention_ms());
        let reply = self.run_script(doing, invocation).await?;
        let bad = || unexpected_reply(&doing(), &reply);
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        match items.as_slice() {
            [flag] if int(flag) == Some(0) => Ok(FinishOutcome::NotHeld),
            [flag, status] if int(flag) == Some(1) => {
                Ok(FinishOutcome::Finished(status_of(status).ok_or_else(bad)?))
            }
            _ => Err(bad()),
        }
    }

    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError> {
        let doing = || format!("read the run record of {:?}", key.as_str());
        let invocation = self.ledger_invocation(&GET, Some(key));
        let reply = self.run_script(doing, invocation).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 => {
                parse_record(key, &items[0], &items[1]).map_err(|why| record_error(&doing(), &why))
            }
            _ => Err(unexpected_reply(&doing(), &reply)),
        }
    }

    async fn enqueue(
        &self,
        key: &LockKey,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError> {
        let doing = || format!("enqueue {:?}", key.as_str());
        let mut invocation = self.ledger_invocation(&ENQUEUE, Some(key));
        invocation
            .arg(key.as_str())
            .arg(request_hash.map_or("", RequestHash::as_str));
        let reply = self.run_script(doing, invocation).await?;
        let bad = || unexpected_reply(&doing(), &reply);
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        match items.as_slice() {
            [flag] if int(flag) == Some(1) => Ok(EnqueueOutcome::Created),
            [flag, status] if int(flag) == Some(0) => {
                Ok(EnqueueOutcome::Exists(status_of(status).ok_or_else(bad)?))
            }
            _ => Err(bad()),
        }
    }

    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError> {
        let doing = || format!("retry {:?}", key.as_str());
        let mut invocation = self.ledger_invocation(&RETRY, Some(key));
        invocation
            .arg(key.as_str())
            .arg(self.release_channel())
            .arg(finish_message(key));
        let reply = self.run_script(doing, invocation).await?;
        let bad = || unexpected_reply(&doing(), &reply);
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        match items.as_slice() {
            [flag] if int(flag) == Some(1) => Ok(RetryOutcome::Requeued),
            [flag] if int(flag) == Some(2) => Ok(RetryOutcome::NotFound),
            [flag, status] if int(flag) == Some(0) => {
                Ok(RetryOutcome::Unchanged(status_of(status).ok_or_else(bad)?))
            }
            _ => Err(bad()),
        }
    }

    async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        query.validate()?;
        let doing = || format!("query runs ({:?})", query.filter);
        let filter = match query.filter {
            StatusFilter::Is(status) => status.as_str(),
            StatusFilter::Unfinished => "unfinished",
            StatusFilter::Stuck => return self.query_stuck(query).await,
            StatusFilter::All => "all",
        };
        let mut invocation = self.ledger_invocation(&QUERY, None);
        invocation
            .arg(filter)
            .arg(match query.order {
                Order::OldestFirst => "asc",
                Order::NewestFirst => "desc",
            })
            .arg(query.limit);
        match &query.after {
            Some(cursor) => invocation.arg(cursor.updated_ms).arg(cursor.key.as_str()),
            None => invocation.arg("").arg(""),
        };
        invocation.arg(self.run_record_prefix());
        let reply = self.run_script(doing, invocation).await?;
        let bad = || unexpected_reply(&doing(), &reply);
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        let [now, more, rest @ ..] = items.as_slice() else {
            return Err(bad());
        };
        if rest.len() % 2 != 0 {
            return Err(bad());
        }
        let mut records = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks_exact(2) {
            let key = text(&pair[0])
                .and_then(|k| LockKey::new(k).ok())
                .ok_or_else(bad)?;
            // The script skips (and removes) entries whose record expired,
            // and writes records and entries together otherwise, so a
            // missing record here is an error.
            let record = parse_record(&key, now, &pair[1])
                .and_then(|r| r.ok_or_else(|| "an indexed record is missing".to_owned()))
                .map_err(|why| record_error(&doing(), &why))?;
            records.push(record);
        }
        let next = match int(more) {
            Some(1) => records.last().map(PageCursor::after),
            Some(0) => None,
            _ => return Err(bad()),
        };
        Ok(RunPage { records, next })
    }

    /// In batches of at most
    /// [`purge_batch_size`](crate::RedisStoreBuilder::purge_batch_size)
    /// records, one `EVALSHA` each, so a large purge never blocks the
    /// server for long. The cutoff is fixed by the first batch. An error
    /// part-way leaves the batches before it done (each is atomic), and a
    /// later purge continues.
    async fn purge(&self, older_than: Duration) -> Result<u64, LockError> {
        let doing = || "purge finished runs".to_owned();
        let age_ms = u64::try_from(older_than.as_millis())
            .unwrap_or(u64::MAX)
            .min(1 << 53);
        let mut cutoff: Option<u64> = None;
        let mut total = 0u64;
        loop {
            let mut invocation = self.ledger_invocation(&PURGE, None);
            invocation
                .arg(age_ms)
                .arg(self.run_record_prefix())
                .arg(self.purge_batch_size());
            match cutoff {
                Some(ms) => invocation.arg(ms),
                None => invocation.arg(""),
            };
            let reply = self.run_script(doing, invocation).await?;
            let bad = || unexpected_reply(&doing(), &reply);
            let Value::Array(items) = &reply else {
                return Err(bad());
            };
            let [deleted, more, at] = items.as_slice() else {
                return Err(bad());
            };
            total += uint(deleted).ok_or_else(bad)?;
            cutoff = Some(uint(at).ok_or_else(bad)?);
            match int(more) {
                Some(0) => return Ok(total),
                Some(1) => {}
                _ => return Err(bad()),
            }
        }
    }

    fn finish_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        self.message_signal(&finish_message(key))
    }
}

impl RedisStore {
    /// `query(Stuck)`: walks the running set in the query's order, one
    /// script per [`stuck_scan_batch_size`](crate::RedisStoreBuilder::stuck_scan_batch_size)
    /// entries (see `ledger_scan_stuck.lua`), until it has one record more
    /// than the page or the set ends. The page is as one script would have
    /// made it, except that its records are read at different times, like
    /// the pages of a query are.
    async fn query_stuck(&self, query: &RunQuery) -> Result<RunPage, LockError> {
        let doing = || "query stuck runs".to_owned();
        let wanted = query.limit as usize + 1;
        let mut records = Vec::with_capacity(wanted.min(64));
        let mut position = query
            .after
            .as_ref()
            .map(|cursor| (cursor.updated_ms, cursor.key.as_str().to_owned()));
        loop {
            let mut invocation = self.ledger_invocation(&SCAN_STUCK, None);
            invocation
                .arg(match query.order {
                    Order::OldestFirst => "asc",
                    Order::NewestFirst => "desc",
                })
                .arg(wanted - records.len())
                .arg(self.stuck_scan_batch_size());
            match &position {
                Some((ms, key)) => invocation.arg(*ms).arg(key.as_str()),
                None => invocation.arg("").arg(""),
            };
            invocation.arg(self.run_record_prefix());
            let reply = self.run_script(doing, invocation).await?;
            let bad = || unexpected_reply(&doing(), &reply);
            let Value::Array(items) = &reply else {
                return Err(bad());
            };
            let [now, _examined, last_ms, last_key, rest @ ..] = items.as_slice() else {
                return Err(bad());
            };
            if rest.len() % 2 != 0 || rest.len() / 2 > wanted - records.len() {
                return Err(bad());
            }
            for pair in rest.chunks_exact(2) {
                let key = text(&pair[0])
                    .and_then(|k| LockKey::new(k).ok())
                    .ok_or_else(bad)?;
                let record = parse_record(&key, now, &pair[1])
                    .and_then(|r| r.ok_or_else(|| "a stuck record is missing".to_owned()))
                    .map_err(|why| record_error(&doing(), &why))?;
                records.push(record);
            }
            let last_key = text(last_key).ok_or_else(bad)?;
            if records.len() >= wanted || last_key.is_empty() {
                break;
            }
            position = Some((uint(last_ms).ok_or_else(bad)?, last_key));
        }
        let more = records.len() > query.limit as usize;
        records.truncate(query.limit as usize);
        let next = if more {
            records.last().map(PageCursor::after)
        } else {
            None
        };
        Ok(RunPage { records, next })
    }
}

fn record_error(doing: &str, why: &str) -> LockError {
    LockError::permanent(
        BACKEND,
        format!("{doing}: the stored run record is malformed ({why})"),
        lockstore_api::UnexpectedReply(why.to_owned()),
    )
}

/// Builds a record from `HGETALL`'s flat field/value list; `Ok(None)` for an
/// empty list (no record).
fn parse_record(key: &LockKey, now: &Value, fields: &Value) -> Result<Option<RunRecord>, String> {
    let now = uint(now).ok_or("the server time is not a number")?;
    let Value::Array(flat) = fields else {
        return Err("the record is not a list".into());
    };
    if flat.is_empty() {
        return Ok(None);
    }
    if flat.len() % 2 != 0 {
        return Err("the record has an odd field list".into());
    }
    let mut map: HashMap<String, &Value> = HashMap::new();
    for pair in flat.chunks_exact(2) {
        let name = text(&pair[0]).ok_or("a field name is not text")?;
        map.insert(name, &pair[1]);
    }
    let number = |name: &str| -> Result<Option<u64>, String> {
        match map.get(name) {
            None => Ok(None),
            Some(v) => uint(v)
                .map(Some)
                .ok_or_else(|| format!("field {name} is not a number")),
        }
    };
    let required = |name: &str| -> Result<u64, String> {
        number(name)?.ok_or_else(|| format!("field {name} is missing"))
    };
    let small = |n: u64, name: &str| u32::try_from(n).map_err(|_| format!("{name} is too large"));
    let status = map
        .get("status")
        .and_then(|v| status_of(v))
        .ok_or("the status is missing or unknown")?;
    let lease_expires_in = match (status, number("expires_at_us")?) {
        (RunStatus::Running, Some(at)) if at > now => Some(Duration::from_micros(at - now)),
        _ => None,
    };
    let mut errors = Vec::new();
    for slot in 0..lockstore_api::ledger::ERROR_HISTORY {
        if let Some(v) = map.get(format!("err{slot}").as_str()) {
            let json = text(v).ok_or("a stored error is not text")?;
            errors.push(RunError::from_json(BACKEND, &json).map_err(|e| e.to_string())?);
        }
    }
    let request_hash = match map.get("hash") {
        Some(v) => Some(
            text(v)
                .and_then(|h| RequestHash::new(h).ok())
                .ok_or("the request hash is not valid")?,
        ),
        None => None,
    };
    Ok(Some(RunRecord {
        key: key.clone(),
        status,
        attempts: small(required("attempts")?, "attempts")?,
        max_attempts: small(required("max_attempts")?, "max_attempts")?,
        fence: number("fence")?.map(FencingToken::new),
        owner: map
            .get("owner")
            .map(|v| text(v).ok_or("owner is not text"))
            .transpose()?,
        lease_expires_in,
        result: match map.get("result") {
            Some(Value::BulkString(bytes)) => Some(bytes.clone()),
            Some(_) => return Err("the result is not a string".into()),
            None => None,
        },
        errors: RunError::history(errors),
        request_hash,
        created_at: time_from_unix_millis(required("created_ms")?),
        updated_at: time_from_unix_millis(required("updated_ms")?),
        finished_at: number("finished_ms")?.map(time_from_unix_millis),
    }))
}

fn status_of(value: &Value) -> Option<RunStatus> {
    text(value)?.parse().ok()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn uint(value: &Value) -> Option<u64> {
    u64::try_from(int(value)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn fields(pairs: &[(&str, &str)]) -> Value {
        Value::Array(pairs.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())
    }

    #[test]
    fn records_parse_strictly() {
        let key = LockKey::new("k").unwrap();
        let now = Value::Int(5_000_000);
        let good = [
            ("status", "running"),
            ("attempts", "1"),
            ("max_attempts", "3"),
            ("fence", "42"),
            ("owner", "w"),
            ("expires_at_us", "6000000"),
            ("created_ms", "1"),
            ("updated_ms", "2"),
        ];
        let record = parse_record(&key, &now, &fields(&good)).unwrap().unwrap();
        assert_eq!(record.lease_expires_in, Some(Duration::from_secs(1)));
        assert_eq!(record.fence, Some(FencingToken::new(42)));
        assert_eq!(parse_record(&key, &now, &Value::Array(vec![])), Ok(None));
        for (name, bad) in [
            ("status", "done"),
            ("attempts", "-1"),
            ("attempts", "x"),
            ("max_attempts", "99999999999"),
            ("created_ms", ""),
        ] {
            let mut pairs = good.to_vec();
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, bad));
            assert!(
                parse_record(&key, &now, &fields(&pairs)).is_err(),
                "{name}={bad}"
            );
        }
        let mut missing = good.to_vec();
        missing.retain(|(k, _)| *k != "updated_ms");
        assert!(parse_record(&key, &now, &fields(&missing)).is_err());
        let mut bad_error = good.to_vec();
        bad_error.push(("err1", "not json"));
        assert!(parse_record(&key, &now, &fields(&bad_error)).is_err());
        assert!(parse_record(&key, &Value::Nil, &fields(&good)).is_err());
        assert!(parse_record(&key, &now, &Value::Array(vec![bulk("status")])).is_err());
    }
}
