//! The [`LedgerStore`] trait: the transitions every ledger backend implements.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::record::{RequestHash, RunError, RunRecord, RunStatus};
use crate::{
    FencingToken, LeaseId, LockError, LockKey, OwnerLabel, ReleaseSignal, RenewOutcome, Ttl,
};

/// A request to start a run of `key`, as sent to a backend.
///
/// Like [`AcquireRequest`](crate::AcquireRequest), the lease id is made by
/// the client: a `begin` retried after a lost reply carries the same id and
/// finds its own run instead of starting a second one.
#[derive(Clone, Debug)]
pub struct BeginRequest {
    /// The key whose work is to run.
    pub key: LockKey,
    /// The id of the run's lease.
    pub lease_id: LeaseId,
    /// How long the run's lease lives unless renewed.
    pub ttl: Ttl,
    /// Who runs it, stored with the record.
    pub owner: OwnerLabel,
    /// Start a `failed` record only while `attempts < max_attempts`
    /// (1..=[`MAX_ATTEMPTS`](super::MAX_ATTEMPTS)); stored for `fail`.
    pub max_attempts: u32,
    /// The request's fingerprint, if the caller gave one.
    pub request_hash: Option<RequestHash>,
}

/// The answer to [`LedgerStore::begin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeginOutcome {
    /// A run started (or, for a retried request with the same lease id, is
    /// still this request's run): the record is `running` under the
    /// request's lease id.
    Started {
        /// The run's fencing token: larger than every earlier token of the
        /// key, for locks and runs alike.
        fence: FencingToken,
        /// Which attempt this run is (1 for the first).
        attempt: u32,
        /// Whether this run took over another: true exactly when the record
        /// was `running` under another lease id whose lease had expired (a
        /// stuck run, whose worker crashed or stopped renewing). False for
        /// a new key, a `pending` record, a retry of a `failed` record, and
        /// a retried begin with the same lease id that finds its own run.
        /// Told by the same request that started the run.
        took_over: bool,
    },
    /// Nothing was started; the record as it is, in the same reply: a
    /// stored result, a live run, an ignored key, a failed key out of
    /// attempts, a stuck run out of attempts, or a record made for a
    /// different request hash.
    Existing(RunRecord),
}

/// How a run ended, as sent by [`LedgerStore::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The work succeeded; store `result` (at most
    /// [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES)).
    Succeeded {
        /// What to replay to duplicates.
        result: Option<Vec<u8>>,
    },
    /// The work failed. The record becomes `failed` if `error.retryable`
    /// and attempts are left (`attempts < max_attempts`), else `ignored`.
    /// The error goes to history slot `error.slot()`.
    Failed {
        /// The error of this attempt (its `attempt` is the run's).
        error: RunError,
    },
}

/// A request to end a run, conditioned on its lease id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishRequest {
    /// The run's key.
    pub key: LockKey,
    /// The run's lease id: a finish by anyone else changes nothing.
    pub lease_id: LeaseId,
    /// How it ended.
    pub finish: Finish,
}

impl FinishRequest {
    /// Checks what a store must refuse whoever calls it: a result over
    /// [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES). Every
    /// [`LedgerStore::finish`] calls it before sending anything, so the limit
    /// holds for a store called directly as for one behind
    /// [`Ledger`](super::Ledger). (An error message over
    /// [`MAX_ERROR_BYTES`](super::MAX_ERROR_BYTES) is not refused but cut,
    /// as [`RunError::stored`] does.)
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`].
    pub fn validate(&self) -> Result<(), LockError> {
        self.finish.validate()
    }
}

impl Finish {
    /// Checks the result size; see [`FinishRequest::validate`].
    ///
    /// # Errors
    /// [`LockError::ResultTooLarge`].
    pub fn validate(&self) -> Result<(), LockError> {
        match self {
            Finish::Succeeded {
                result: Some(result),
            } if result.len() > super::MAX_RESULT_BYTES => Err(LockError::ResultTooLarge {
                size: result.len(),
                limit: super::MAX_RESULT_BYTES,
            }),
            _ => Ok(()),
        }
    }
}

/// The answer to [`LedgerStore::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The record was this run's and now has this status.
    Finished(RunStatus),
    /// The record is not this run's any more (another run took over after
    /// the lease expired, an operator changed it, or it is gone). Nothing
    /// was changed: a stale finisher never overwrites a newer run.
    NotHeld,
}

/// The answer to [`LedgerStore::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// A `pending` record was created.
    Created,
    /// A record existed and was left exactly as it was.
    Exists(RunStatus),
}

/// The answer to [`LedgerStore::retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The record was `failed`, `ignored` or stuck (running with an expired
    /// lease) and is now `pending`.
    Requeued,
    /// The record has a status retry does not touch (pending, a live run,
    /// succeeded); nothing was changed.
    Unchanged(RunStatus),
    /// No record for the key.
    NotFound,
}

/// Which records a query returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Records with exactly this status (`Running` includes stuck runs).
    Is(RunStatus),
    /// Work not done yet: pending, running (live or stuck) and failed.
    Unfinished,
    /// Running records whose lease has expired.
    Stuck,
    /// Every record.
    All,
}

impl StatusFilter {
    /// Whether `record` matches.
    pub fn matches(&self, record: &RunRecord) -> bool {
        match self {
            StatusFilter::Is(status) => record.status == *status,
            StatusFilter::Unfinished => !record.status.is_finished(),
            StatusFilter::Stuck => record.is_stuck(),
            StatusFilter::All => true,
        }
    }
}

/// Which end of the `updated_at` order a query starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// Least recently updated first: the work that waited longest.
    #[default]
    OldestFirst,
    /// Most recently updated first.
    NewestFirst,
}

/// Where the next page of a query starts: after the record updated at
/// `updated_ms` (ms since the Unix epoch) with key `key`, in the query's
/// order. Records are ordered by `(updated_at, key)`.
///
/// A cursor is a position, not a snapshot: see [`LedgerStore::query`] for
/// what paging promises while records change.
///
/// Opaque to callers ([`fmt::Display`] / [`std::str::FromStr`] give a text
/// form for a CLI's `--after`); every backend pages by the same position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// `updated_at` of the last record returned, in ms since the epoch.
    pub updated_ms: u64,
    /// Its key.
    pub key: LockKey,
}

impl PageCursor {
    /// The cursor after `record`.
    pub fn after(record: &RunRecord) -> Self {
        Self {
            updated_ms: super::record::unix_millis(record.updated_at),
            key: record.key.clone(),
        }
    }
}

impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.updated_ms, self.key)
    }
}

impl std::str::FromStr for PageCursor {
    type Err = LockError;

    fn from_str(s: &str) -> Result<Self, LockError> {
        let bad = || LockError::InvalidArgument {
            name: "page cursor",
            reason: format!("{s:?} is not a cursor printed by a previous page (MILLIS:KEY)"),
        };
        let (millis, key) = s.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            updated_ms: millis.parse().map_err(|_| bad())?,
            key: LockKey::new(key).map_err(|_| bad())?,
        })
    }
}

/// A query of records by status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunQuery {
    /// Which records.
    pub filter: StatusFilter,
    /// Which end first.
    pub order: Order,
    /// At most this many records (1..=[`RunQuery::MAX_LIMIT`]).
    pub limit: u32,
    /// Continue after this position (from [`RunPage::next`]).
    pub after: Option<PageCursor>,
}

impl RunQuery {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first page (100 records, oldest first) of records matching
    /// `filter`.
    pub fn new(filter: StatusFilter) -> Self {
        Self {
            filter,
            order: Order::OldestFirst,
            limit: 100,
            after: None,
        }
    }

    /// Newest first instead.
    pub fn newest_first(mut self) -> Self {
        self.order = Order::NewestFirst;
        self
    }

    /// At most `limit` records per page.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: PageCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Checks the limit.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] for a limit of 0 or above
    /// [`RunQuery::MAX_LIMIT`].
    pub fn validate(&self) -> Result<(), LockError> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(LockError::InvalidArgument {
                name: "query limit",
                reason: format!("{} is outside 1..=1000", self.limit),
            });
        }
        Ok(())
    }
}

/// One page of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPage {
    /// The records, in the query's order.
    pub records: Vec<RunRecord>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<PageCursor>,
}

/// A storage backend for the execution ledger ("run once").
///
/// A small core of transitions, each **one atomic request** to the backend
/// (one SQL statement, one Lua script, one conditional `UpdateItem`).
/// Waiting, renewal, `run_once` and result (de)serialisation are built once
/// on top, in [`Ledger`](super::Ledger). Every implementation keeps the
/// ledger contract (`CONTRACT.md`, "The run-once ledger"); the conformance
/// suite checks it.
///
/// Records live apart from locks: the record of key `k` does not block
/// `LockStore::try_acquire("k")`, and the other way round. Fencing tokens of
/// runs strictly increase per key, across takeover, retry, purge and
/// restart, as a lock's do.
///
/// Inputs reach a backend validated by the client ([`LockKey`], [`Ttl`],
/// result size, attempt limit); a backend that is called directly must not
/// panic on anything else either. The size limits are the store's own to
/// keep, whoever calls it: `finish` refuses a result over
/// [`MAX_RESULT_BYTES`](super::MAX_RESULT_BYTES) through
/// [`FinishRequest::validate`], and stores an error message cut to
/// [`MAX_ERROR_BYTES`](super::MAX_ERROR_BYTES) ([`RunError::stored`],
/// [`RunError::to_json`]).
#[async_trait]
pub trait LedgerStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for errors and traces: `"memory"`, `"postgres"`, ….
    fn backend_name(&self) -> &'static str;

    /// Starts a run if the record is absent, `pending`, `failed` with
    /// `attempts < max_attempts`, or `running` with an expired lease and
    /// `attempts < max_attempts` (a takeover), and the request hash does
    /// not conflict (both present and different). A start sets status
    /// `running`, `attempts + 1`, a fresh fence, the lease, the owner,
    /// `max_attempts`, and the hash if the record had none.
    ///
    /// A start over a stuck run answers `took_over: true`; every other
    /// start answers `false`.
    ///
    /// A record `running` under `request.lease_id` (a retried request) is
    /// refreshed for the TTL and answered `Started` with its fence and
    /// attempt unchanged, and `took_over: false`.
    ///
    /// Anything else answers [`BeginOutcome::Existing`] with the record,
    /// unchanged, in the same reply.
    async fn begin(&self, request: &BeginRequest) -> Result<BeginOutcome, LockError>;

    /// Extends the running lease `lease_id` of `key` to `ttl` from now, if
    /// it is still the live lease of a `running` record.
    async fn renew_run(
        &self,
        key: &LockKey,
        lease_id: LeaseId,
        ttl: Ttl,
    ) -> Result<RenewOutcome, LockError>;

    /// Ends the run `request.lease_id` of `request.key`, if the record is
    /// still `running` under that lease id (its lease may have expired, as
    /// long as nobody took over). Clears the lease and sets `finished_at`.
    ///
    /// Calls [`FinishRequest::validate`] first: an oversized result is
    /// [`LockError::ResultTooLarge`] and changes nothing. The error of a
    /// failure is stored as [`RunError::stored`] gives it.
    async fn finish(&self, request: &FinishRequest) -> Result<FinishOutcome, LockError>;

    /// The record of `key`, if any.
    async fn get(&self, key: &LockKey) -> Result<Option<RunRecord>, LockError>;

    /// Creates a `pending` record (attempts 0) if `key` has none; never
    /// changes an existing record.
    async fn enqueue(
        &self,
        key: &LockKey,
        request_hash: Option<&RequestHash>,
    ) -> Result<EnqueueOutcome, LockError>;

    /// Puts a `failed`, `ignored` or stuck record back to `pending`, for an
    /// operator. Attempts keep counting: a pending record is always started
    /// by the next `begin`, so a retry grants at least one more run.
    async fn retry(&self, key: &LockKey) -> Result<RetryOutcome, LockError>;

    /// Records matching `query.filter`, ordered by `(updated_at, key)` in
    /// `query.order`, starting after `query.after`, at most `query.limit`.
    ///
    /// Paging is by position, not over a snapshot. A record that does not
    /// change while the pages are read is listed exactly once. A record
    /// updated in between (a run started or finished, a retry) moves to its
    /// new `updated_at`: oldest first, it can be listed again on a later
    /// page; newest first, it moves behind the cursor and is missed; and it
    /// may leave or enter the filter. A record that is never updated again
    /// is always reached, so a scheduler that pages oldest first and skips
    /// keys it has seen sees every waiting record at least once.
    async fn query(&self, query: &RunQuery) -> Result<RunPage, LockError>;

    /// Deletes finished records (`succeeded`, `ignored`) whose `updated_at`
    /// is at least `older_than` ago; never an unfinished one. Returns how
    /// many were deleted. Fences of purged keys still never go backwards.
    async fn purge(&self, older_than: Duration) -> Result<u64, LockError>;

    /// Subscribes to the next finish of `key` (or any change that ends a
    /// run), for backends that can tell. Called *before* reading the record,
    /// so a finish between the two is not missed. The default, `None`,
    /// means waiters poll with backoff bounded by the running lease.
    fn finish_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let _ = key;
        None
    }
}
