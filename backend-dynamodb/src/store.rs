//! The [`LockStore`] implementation: one conditional `UpdateItem` per
//! acquire, renew and release; one consistent `GetItem` per inspect.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lockstore_api::{
    AcquireOutcome, AcquireRequest, FencingToken, Holder, LeaseId, LockError, LockKey, LockStore,
    ReleaseOutcome, RenewOutcome, Ttl,
};

use crate::BACKEND;
use crate::config::{DynamoDbStoreBuilder, StoreConfig, TakeoverMode};
use crate::error::{bad_item, map_sdk_error};
use crate::expressions as expr;
use crate::layout;
use crate::observe::{Observations, Verdict};

/// A stored item, as the SDK returns it.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// How often an acquire goes round when the item changes between its write
/// and its look at the refusal (a lease expiring or released just then).
/// Each round is a fresh, complete attempt; more than a few in a row means
/// heavy contention, reported as a retryable error.
const ACQUIRE_ROUNDS: usize = 4;

/// A [`LockStore`] on a DynamoDB table. Clones share the client and the
/// skew-free observations.
///
/// Made by [`DynamoDbStore::builder`]; see the [crate docs](crate) for the
/// item layout, fencing and clock assumptions.
#[derive(Clone)]
pub struct DynamoDbStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: StoreConfig,
    operations: Operations,
    observations: Observations,
    holder_reads: AtomicU64,
    ledger_reads: AtomicU64,
}

impl fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("DynamoDbStore")
            .field("table", &c.table)
            .field("partition_key", &c.partition_key)
            .field("key_prefix", &c.key_prefix)
            .field("takeover", &c.takeover)
            .field("clock_skew_allowance", &c.clock_skew_allowance)
            .field("ledger_retention", &c.ledger_retention)
            .finish_non_exhaustive()
    }
}

impl DynamoDbStore {
    /// Starts configuring a store on `table`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), lockstore_api::LockError> {
    /// use std::time::Duration;
    /// use lockstore_dynamodb::DynamoDbStore;
    ///
    /// let store = DynamoDbStore::builder("YourTable")
    ///     .partition_key("YourKey")
    ///     .key_prefix("billing:")
    ///     .clock_skew_allowance(Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// store.check_table().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(table: impl Into<String>) -> DynamoDbStoreBuilder {
        DynamoDbStoreBuilder::new(table)
    }

    pub(crate) fn new(client: Client, config: StoreConfig) -> Self {
        let observations = Observations::new(config.max_observations);
        let operations = Operations::new(&config);
        Self {
            inner: Arc::new(Inner {
                client,
                operations,
                config,
                observations,
                holder_reads: AtomicU64::new(0),
                ledger_reads: AtomicU64::new(0),
            }),
        }
    }

    /// The SDK client, for requests of your own against the same table.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The table name.
    pub fn table_name(&self) -> &str {
        &self.inner.config.table
    }

    /// The partition-key attribute name.
    pub fn partition_key(&self) -> &str {
        &self.inner.config.partition_key
    }

    /// The cleanup (DynamoDB TTL) attribute name.
    pub fn cleanup_attribute(&self) -> &str {
        &self.inner.config.cleanup_attribute
    }

    /// The partition-key value stored for `key`: the key itself, or, with a
    /// key prefix, the prefix, a NUL and the key. Neither a prefix nor a key
    /// can hold a NUL, so two prefixes never share an item (`billing:` with
    /// `eu:job` and `billing:eu:` with `job` are different items).
    pub fn item_key(&self, key: &LockKey) -> String {
        let prefix = &self.inner.config.key_prefix;
        if prefix.is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{prefix}\0{}", key.as_str())
        }
    }

    /// How many refused writes needed a second request (a `GetItem`) to
    /// read the item, because the server did not return it with
    /// `ConditionalCheckFailedException` as DynamoDB does: a refused acquire
    /// (to learn the holder), a refused renewal in wall-clock mode, or any
    /// refused release (to tell the cleanup rule, or a retry of our own
    /// release, from a lease that is gone). Zero on DynamoDB and on moto 5
    /// (tested with 5.2).
    pub fn holder_reads(&self) -> u64 {
        self.inner.holder_reads.load(Ordering::Relaxed)
    }

    /// How many ledger transitions needed a `GetItem` to read the record
    /// after a refused write, because the server did not return it (as
    /// dynalite does not); see the `ledger` module docs.
    pub fn ledger_reads(&self) -> u64 {
        self.inner.ledger_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn count_ledger_read(&self) {
        self.inner.ledger_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// An `UpdateItem` on `pk` with exactly the names and values its
    /// expressions use.
    fn update(&self, pk: &str, operation: &Prepared, values: &Values) -> UpdateItemFluentBuilder {
        let c = &self.inner.config;
        let values: HashMap<String, AttributeValue> = values
            .0
            .iter()
            .filter(|(name, _)| operation.values.iter().any(|used| used == name))
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        self.inner
            .client
            .update_item()
            .table_name(&c.table)
            .key(&c.partition_key, AttributeValue::S(pk.to_owned()))
            .condition_expression(&operation.condition)
            .update_expression(operation.update)
            .set_expression_attribute_names(Some(operation.names.clone()))
            .set_expression_attribute_values(Some(values))
    }

    pub(crate) fn map_err<E>(
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
        let c = &self.inner.config;
        map_sdk_error(error, &format!("{what} {key}"), &c.table, &c.partition_key)
    }

    /// What this client makes of a stored lease: free, or held and for how
    /// long (until *this* client could take it over).
    fn judge(&self, pk: &str, lease: &StoredLease, now: Duration, received: Instant) -> Judgement {
        let Some(live) = &lease.live else {
            return Judgement::Free;
        };
        match self.inner.config.takeover {
            TakeoverMode::WallClock => {
                let takeover_at = Duration::from_millis(live.expires_at_ms)
                    + self.inner.config.clock_skew_allowance;
                match takeover_at.checked_sub(now) {
                    Some(left) if !left.is_zero() => {
                        Judgement::Held(Holder::new(&live.owner, live.fence, left))
                    }
                    _ => Judgement::Free,
                }
            }
            TakeoverMode::SkewFree => {
                let ttl = Duration::from_millis(live.ttl_ms);
                match self
                    .inner
                    .observations
                    .saw(pk, &live.version, ttl, received)
                {
                    Verdict::Wait(left) => {
                        Judgement::Held(Holder::new(&live.owner, live.fence, left))
                    }
                    Verdict::TakeOver(_) => Judgement::Free,
                }
            }
        }
    }

    /// A refused write: the item as it was, from the refusal itself or, on
    /// servers that do not send it, from a consistent read.
    pub(crate) async fn refused_item(
        &self,
        key: &LockKey,
        pk: &str,
        error: &UpdateItemError,
    ) -> Result<Option<Item>, LockError> {
        if let UpdateItemError::ConditionalCheckFailedException(refusal) = error
            && let Some(item) = refusal.item()
        {
            return Ok(Some(item.clone()));
        }
        self.inner.holder_reads.fetch_add(1, Ordering::Relaxed);
        self.get(key, pk).await
    }

    pub(crate) async fn get(&self, key: &LockKey, pk: &str) -> Result<Option<Item>, LockError> {
        let c = &self.inner.config;
        let reply = self
            .inner
            .client
            .get_item()
            .table_name(&c.table)
            .key(&c.partition_key, AttributeValue::S(pk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.map_err("inspect", key, e))?;
        Ok(reply.item)
    }

    /// Extends our own live lease after a retried acquire found it, keeping
    /// its token. `None` when the lease went away in between.
    async fn refresh(
        &self,
        request: &AcquireRequest,
        pk: &str,
        values: &Values,
    ) -> Result<Option<FencingToken>, LockError> {
        let reply = self
            .update(pk, &self.inner.operations.refresh, values)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match reply {
            Ok(out) => fence_of(out.attributes(), || format!("acquire {}", request.key)).map(Some),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(self.map_err("acquire", &request.key, e)),
        }
    }
}

/// One operation's expressions with the attribute names and the value
/// placeholders they use, worked out once per store rather than parsed again
/// for every request.
struct Prepared {
    condition: String,
    update: &'static str,
    names: HashMap<String, String>,
    values: Vec<String>,
}

impl Prepared {
    fn new(condition: String, update: &'static str, config: &StoreConfig) -> Self {
        let expressions = [condition.as_str(), update];
        Self {
            names: expr::names_for(
                &expressions,
                &config.partition_key,
                &config.cleanup_attribute,
            ),
            values: expr::placeholders(&expressions, ':')
                .into_iter()
                .map(str::to_owned)
                .collect(),
            condition,
            update,
        }
    }
}

/// Every operation's [`Prepared`] expressions.
struct Operations {
    acquire: Prepared,
    acquire_skew_free: Prepared,
    acquire_seen_version: Prepared,
    refresh: Prepared,
    renew: Prepared,
    release: Prepared,
}

impl Operations {
    fn new(c: &StoreConfig) -> Self {
        let prepare = |condition: &str, update| Prepared::new(condition.to_owned(), update, c);
        // The grant, refresh and renewal differ between the takeover modes
        // (skew-free ones carry no cleanup time); the release does not.
        let writes = match c.takeover {
            TakeoverMode::WallClock => &expr::WALL_CLOCK,
            TakeoverMode::SkewFree => &expr::SKEW_FREE,
        };
        Self {
            acquire: prepare(expr::ACQUIRE_CONDITION, writes.acquire_update),
            acquire_skew_free: prepare(expr::ACQUIRE_CONDITION_SKEW_FREE, writes.acquire_update),
            acquire_seen_version: Prepared::new(
                format!(
                    "{}{}",
                    expr::ACQUIRE_CONDITION_SKEW_FREE,
                    expr::ACQUIRE_CONDITION_SEEN_VERSION
                ),
                writes.acquire_update,
                c,
            ),
            refresh: prepare(writes.refresh_condition, writes.refresh_update),
            renew: prepare(writes.renew_condition, writes.renew_update),
            release: prepare(expr::RELEASE_CONDITION, expr::RELEASE_UPDATE),
        }
    }
}

/// The expression values of one request, by placeholder.
struct Values(Vec<(&'static str, AttributeValue)>);

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A fresh record version: every write gets one, so a skew-free watcher can
/// tell "unchanged" from "renewed".
pub(crate) fn new_version() -> String {
    format!("{:032x}", LeaseId::random().as_u128())
}

/// Whole seconds in `d`, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A cleanup time and the highest fence it may cover (the cleanup rule,
/// `expressions` module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cleanup {
    /// Epoch seconds, for the cleanup attribute.
    pub(crate) at_secs: u64,
    /// The item's fence after the write must stay below this.
    pub(crate) fence_cap: u64,
}

impl DynamoDbStore {
    /// The cleanup time of a write whose lease (if any) ends at `until` on
    /// the writer's clock, raised when need be to cover a fence of
    /// `fence_floor`. Rounded up: DynamoDB TTL works in whole seconds, and
    /// early is the wrong side.
    pub(crate) fn cleanup(&self, until: Duration, fence_floor: u64) -> Cleanup {
        self.cleanup_after_delay(until, fence_floor, self.inner.config.cleanup_after)
    }

    /// The cleanup rule with another delay than `cleanup_after` (the
    /// ledger's retention of finished records): the cleanup time is `delay`
    /// after the later of `until` and `fence_floor` read as microseconds.
    pub(crate) fn cleanup_after_delay(
        &self,
        until: Duration,
        fence_floor: u64,
        delay: Duration,
    ) -> Cleanup {
        let base = ceil_secs(until).max(fence_floor.div_ceil(1_000_000));
        Cleanup {
            at_secs: base.saturating_add(ceil_secs(delay)),
            fence_cap: base.saturating_mul(1_000_000),
        }
    }

    /// The values every lease-writing request may use, computed from one
    /// reading of the wall clock, with a cleanup time that covers a fence
    /// of `fence_floor` (0 until a refusal showed a higher fence).
    fn lease_values(
        &self,
        lease_id: LeaseId,
        owner: &str,
        ttl: Ttl,
        now: Duration,
        fence_floor: u64,
    ) -> (Values, Cleanup) {
        let c = &self.inner.config;
        let expires = now + ttl.as_duration();
        let cutoff = now.saturating_sub(c.clock_skew_allowance);
        let cleanup = self.cleanup(expires, fence_floor);
        let values = Values(vec![
            (":lease_id", s(lease_id.to_string())),
            (":owner", s(owner)),
            (":expires_at_ms", n(millis(expires))),
            (":ttl_ms", n(ttl.as_millis())),
            (":version", s(new_version())),
            (":cleanup_at", n(cleanup.at_secs)),
            (":fence_cap", n(cleanup.fence_cap)),
            (":fence_base", n(micros(now))),
            (":one", n(1)),
            (":now_ms", n(millis(now))),
            (":takeover_cutoff_ms", n(millis(cutoff))),
        ]);
        (values, cleanup)
    }
}

/// The stored fence, when it is at or above `cap`: the write was refused
/// by the cleanup rule, not (or not only) for the lease.
fn fence_at_or_above(item: &Item, cap: u64, what: &str) -> Result<Option<u64>, LockError> {
    let fence = number(item, layout::FENCE).map_err(|problem| bad_item(what, problem))?;
    Ok(fence.filter(|&f| f >= cap))
}

/// A stored item, read.
struct StoredLease {
    /// `None` when the item has no lease (released, or never held).
    live: Option<LiveLease>,
}

struct LiveLease {
    lease_id: String,
    owner: String,
    fence: FencingToken,
    expires_at_ms: u64,
    ttl_ms: u64,
    version: String,
}

enum Judgement {
    Free,
    Held(Holder),
}

/// A number attribute, strictly parsed (shared with the ledger's items).
pub(crate) fn number(item: &Item, name: &str) -> Result<Option<u64>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("attribute {name} = {text:?} is not a non-negative integer")),
        Some(other) => Err(format!(
            "attribute {name} should be a number, found {other:?}"
        )),
    }
}

/// A string attribute (shared with the ledger's items).
pub(crate) fn string<'i>(item: &'i Item, name: &str) -> Result<Option<&'i str>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(text)) => Ok(Some(text)),
        Some(other) => Err(format!(
            "attribute {name} should be a string, found {other:?}"
        )),
    }
}

fn read_lease(item: &Item) -> Result<StoredLease, String> {
    let Some(lease_id) = string(item, layout::LEASE_ID)? else {
        return Ok(StoredLease { live: None });
    };
    let missing = |name: &str| format!("a held lock item lacks attribute {name}");
    Ok(StoredLease {
        live: Some(LiveLease {
            lease_id: lease_id.to_owned(),
            owner: string(item, layout::LEASE_OWNER)?.unwrap_or("").to_owned(),
            fence: FencingToken::new(
                number(item, layout::FENCE)?.ok_or_else(|| missing(layout::FENCE))?,
            ),
            expires_at_ms: number(item, layout::LEASE_EXPIRES_AT_MS)?
                .ok_or_else(|| missing(layout::LEASE_EXPIRES_AT_MS))?,
            ttl_ms: number(item, layout::LEASE_TTL_MS)?
                .ok_or_else(|| missing(layout::LEASE_TTL_MS))?,
            version: string(item, layout::RECORD_VERSION)?
                .ok_or_else(|| missing(layout::RECORD_VERSION))?
                .to_owned(),
        }),
    })
}

/// The fence in a write's returned attributes. Its absence after a
/// successful grant is reported as a retryable error: the caller does not
/// get a lease it cannot fence, and its retry with the same lease id finds
/// the grant and reads the token.
fn fence_of(
    attributes: Option<&Item>,
    what: impl Fn() -> String,
) -> Result<FencingToken, LockError> {
    let fence = attributes
        .map(|a| number(a, layout::FENCE))
        .transpose()
        .map_err(|problem| bad_item(&what(), problem))?
        .flatten();
    match fence {
        Some(fence) => Ok(FencingToken::new(fence)),
        None => Err(LockError::retryable(
            BACKEND,
            format!(
                "{}: the grant's reply did not include the fencing token; retry with the same lease id",
                what()
            ),
            lockstore_api::UnexpectedReply("UpdateItem reply without the fence attribute".into()),
        )),
    }
}

/// The outcome of a release whose first attempt was applied and whose
/// retry found the item as that attempt left it: `Released` if the lease
/// was live when it was released, as the first reply would have said.
fn released_by_earlier_attempt(item: &Item, what: &str) -> Result<ReleaseOutcome, LockError> {
    let expires = number(item, layout::LEASE_EXPIRES_AT_MS).map_err(|p| bad_item(what, p))?;
    let released = number(item, layout::RELEASED_AT_MS).map_err(|p| bad_item(what, p))?;
    Ok(match (expires, released) {
        (Some(expires), Some(released)) if expires > released => ReleaseOutcome::Released,
        _ => ReleaseOutcome::NotHeld,
    })
}

pub(crate) fn is_condition_failure<R>(
    error: &aws_sdk_dynamodb::error::SdkError<UpdateItemError, R>,
) -> bool {
    error
        .as_service_error()
        .is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

#[async_trait]
impl LockStore for DynamoDbStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn try_acquire(&self, request: &AcquireRequest) -> Result<AcquireOutcome, LockError> {
        let pk = self.item_key(&request.key);
        // Only errors and refusals need it: not formatted on the way to a grant.
        let what = || format!("acquire {}", request.key);
        let owner = request.owner.as_str();
        let mut fence_floor = 0;
        for _ in 0..ACQUIRE_ROUNDS {
            let now = self.config().wall_now()?;
            let (mut values, cleanup) =
                self.lease_values(request.lease_id, owner, request.ttl, now, fence_floor);
            let operations = &self.inner.operations;
            let operation = match self.config().takeover {
                TakeoverMode::WallClock => &operations.acquire,
                TakeoverMode::SkewFree => {
                    match self
                        .inner
                        .observations
                        .takeover_version(&pk, Instant::now())
                    {
                        Some(version) => {
                            values.0.push((":seen_version", s(version)));
                            &operations.acquire_seen_version
                        }
                        None => &operations.acquire_skew_free,
                    }
                }
            };
            let reply = self
                .update(&pk, operation, &values)
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let refusal = match reply {
                Ok(out) => {
                    self.inner.observations.forget(&pk);
                    let fence = fence_of(out.attributes(), what)?;
                    return Ok(AcquireOutcome::Acquired { fence });
                }
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.map_err("acquire", &request.key, e)),
            };
            let Some(item) = self.refused_item(&request.key, &pk, &refusal).await? else {
                // Deleted between the write and the read: go round.
                continue;
            };
            // Stamped after the read, which may be a GetItem: a version it
            // shows may have been written after the refusal came back.
            let received = Instant::now();
            let lease = read_lease(&item).map_err(|problem| bad_item(&what(), problem))?;
            // Only wall-clock grants carry the cleanup rule (skew-free ones
            // remove the cleanup time).
            let fence_ahead = match self.config().takeover {
                TakeoverMode::WallClock => fence_at_or_above(&item, cleanup.fence_cap, &what())?,
                TakeoverMode::SkewFree => None,
            };
            if let Some(fence) = fence_ahead {
                // The item's creator had a clock ahead of ours: the next
                // write's cleanup time is computed from the fence instead.
                fence_floor = fence + 1;
            }
            if lease
                .live
                .as_ref()
                .is_some_and(|l| l.lease_id == request.lease_id.to_string())
            {
                // Our own earlier grant (this is a retried request).
                let (values, _) =
                    self.lease_values(request.lease_id, owner, request.ttl, now, fence_floor);
                match self.refresh(request, &pk, &values).await? {
                    Some(fence) => return Ok(AcquireOutcome::Acquired { fence }),
                    None => continue,
                }
            }
            let now = self.config().wall_now()?;
            match self.judge(&pk, &lease, now, received) {
                Judgement::Held(holder) => return Ok(AcquireOutcome::Held(holder)),
                // It expired or was released just now, or only the cleanup
                // rule refused it: a fresh attempt wins.
                Judgement::Free => continue,
            }
        }
        Err(LockError::retryable(
            BACKEND,
            format!(
                "{}: the lock item changed under {ACQUIRE_ROUNDS} attempts in a row",
                what()
            ),
            lockstore_api::UnexpectedReply("heavy contention on one key".into()),
        ))
    }

    async fn renew(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError> {
        let pk = self.item_key(key);
        let what = || format!("renew {key}");
        let mut fence_floor = 0;
        // A second round only when the cleanup rule refused the first.
        for _ in 0..2 {
            let now = self.config().wall_now()?;
            // The owner is not rewritten by a renewal; its value is unused.
            let (values, cleanup) = self.lease_values(lease_id, "", ttl, now, fence_floor);
            let reply = self
                .update(&pk, &self.inner.operations.renew, &values)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let refusal = match reply {
                Ok(_) => return Ok(RenewOutcome::Renewed),
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.map_err("renew", key, e)),
            };
            if self.config().takeover == TakeoverMode::SkewFree {
                // No cleanup rule in skew-free renewals: the lease is gone.
                return Ok(RenewOutcome::Lost);
            }
            let Some(item) = self.refused_item(key, &pk, &refusal).await? else {
                return Ok(RenewOutcome::Lost);
            };
            let lease = read_lease(&item).map_err(|problem| bad_item(&what(), problem))?;
            let ours_and_live = lease.live.as_ref().is_some_and(|l| {
                l.lease_id == lease_id.to_string() && l.expires_at_ms > millis(now)
            });
            match fence_at_or_above(&item, cleanup.fence_cap, &what())? {
                Some(fence) if ours_and_live => fence_floor = fence + 1,
                _ => return Ok(RenewOutcome::Lost),
            }
        }
        Ok(RenewOutcome::Lost)
    }

    async fn release(&self, key: &LockKey, lease_id: LeaseId) -> Result<ReleaseOutcome, LockError> {
        let pk = self.item_key(key);
        let what = || format!("release {key}");
        let mut fence_floor = 0;
        // A second round only when the cleanup rule refused the first.
        for _ in 0..2 {
            let now = self.config().wall_now()?;
            let cleanup = self.cleanup(now, fence_floor);
            let version = new_version();
            let values = Values(vec![
                (":lease_id", s(lease_id.to_string())),
                (":now_ms", n(millis(now))),
                (":version", s(version.clone())),
                (":cleanup_at", n(cleanup.at_secs)),
                (":fence_cap", n(cleanup.fence_cap)),
            ]);
            let reply = self
                .update(&pk, &self.inner.operations.release, &values)
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let refusal = match reply {
                Ok(out) => {
                    // The write cleared our lease either way; it was a
                    // release of a *live* lease only if it had not yet
                    // expired.
                    let expires_at_ms = out
                        .attributes()
                        .map(|a| number(a, layout::LEASE_EXPIRES_AT_MS))
                        .transpose()
                        .map_err(|problem| bad_item(&what(), problem))?
                        .flatten()
                        .unwrap_or(0);
                    return Ok(if expires_at_ms > millis(now) {
                        ReleaseOutcome::Released
                    } else {
                        ReleaseOutcome::NotHeld
                    });
                }
                Err(e) if is_condition_failure(&e) => e.into_service_error(),
                Err(e) => return Err(self.map_err("release", key, e)),
            };
            let Some(item) = self.refused_item(key, &pk, &refusal).await? else {
                return Ok(ReleaseOutcome::NotHeld);
            };
            if string(&item, layout::RECORD_VERSION).map_err(|p| bad_item(&what(), p))?
                == Some(version.as_str())
            {
                // Our own request, applied by an earlier attempt whose reply
                // was lost (the SDK retried it): its values are in the item.
                return released_by_earlier_attempt(&item, &what());
            }
            let ours = string(&item, layout::LEASE_ID).map_err(|p| bad_item(&what(), p))?
                == Some(lease_id.to_string().as_str());
            match fence_at_or_above(&item, cleanup.fence_cap, &what())? {
                Some(fence) if ours => fence_floor = fence + 1,
                _ => return Ok(ReleaseOutcome::NotHeld),
            }
        }
        Ok(ReleaseOutcome::NotHeld)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<Holder>, LockError> {
        let pk = self.item_key(key);
        let Some(item) = self.get(key, &pk).await? else {
            return Ok(None);
        };
        let received = Instant::now();
        let lease =
            read_lease(&item).map_err(|problem| bad_item(&format!("inspect {key}"), problem))?;
        let now = self.config().wall_now()?;
        Ok(match self.judge(&pk, &lease, now, received) {
            Judgement::Held(holder) => Some(holder),
            Judgement::Free => None,
        })
    }
}
