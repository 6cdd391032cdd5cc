//! The execution ledger on SQL: one set of statements for PostgreSQL and
//! SQLite, rendered per dialect, and one [`LedgerStore`] implementation
//! written once for both stores.
//!
//! The statements live in `sql/ledger/*.sql`. Most are shared: the dialect
//! fills in `{now}` (the database clock in integer milliseconds — PostgreSQL's
//! `now()`, SQLite's host clock), the fence expressions (PostgreSQL's
//! sequence, SQLite's fence counter) and the placeholder style. Only the
//! schema, `enqueue` and `retry` differ: PostgreSQL answers them in one
//! statement (`xmax`, a data-modifying CTE), SQLite, which has neither, in
//! two statements on one connection in one transaction — a local file, so no
//! extra network round trip.
//!
//! Records live in their own table (`<table>_runs`) beside the locks, so a
//! run and a lock of the same key never block each other. A run's fence
//! comes from the same counter as the locks' (the sequence, or SQLite's
//! fence table, which every fence issued or deleted raises), so it is
//! larger than every earlier token of the key, lock or run, across
//! takeover, retry and purge.

use std::time::Duration;

use lockstore_api::ledger::{
    BeginOutcome, EnqueueOutcome, Finish, FinishOutcome, FinishRequest, Order, PageCursor,
    RequestHash, RetryOutcome, RunError, RunPage, RunQuery, RunRecord, RunStatus, StatusFilter,
    time_from_unix_millis,
};
use lockstore_api::{LockError, LockKey, UnexpectedReply};

use crate::ident::render;
use crate::shared::{fence_from_db, millis_left};

mod sql {
    pub(super) const BEGIN: &str = include_str!("sql/ledger/begin.sql");
    pub(super) const RENEW: &str = include_str!("sql/ledger/renew.sql");
    pub(super) const FINISH: &str = include_str!("sql/ledger/finish.sql");
    pub(super) const GET: &str = include_str!("sql/ledger/get.sql");
    pub(super) const PURGE: &str = include_str!("sql/ledger/purge.sql");
    #[cfg(feature = "postgres")]
    pub(super) const PG_SCHEMA: &str = include_str!("sql/ledger/schema.postgres.sql");
    #[cfg(feature = "postgres")]
    pub(super) const PG_ENQUEUE: &str = include_str!("sql/ledger/enqueue.postgres.sql");
    #[cfg(feature = "postgres")]
    pub(super) const PG_RETRY: &str = include_str!("sql/ledger/retry.postgres.sql");
    #[cfg(feature = "sqlite")]
    pub(super) const SQLITE_SCHEMA: &str = include_str!("sql/ledger/schema.sqlite.sql");
    #[cfg(feature = "sqlite")]
    pub(super) const SQLITE_ENQUEUE: &str = include_str!("sql/ledger/enqueue.sqlite.sql");
    #[cfg(feature = "sqlite")]
    pub(super) const SQLITE_RETRY: &str = include_str!("sql/ledger/retry.sqlite.sql");
}

/// The columns every statement returns for a record, in [`RunRow`]'s shape.
const COLUMNS: &str = "key, status, attempts, max_attempts, fence, owner, \
     CASE WHEN status = 'running' AND expires_ms > {now} THEN expires_ms - {now} END AS ms_left, \
     result, err0, err1, err2, err3, err4, request_hash, created_ms, updated_ms, finished_ms";

/// "May start", and not "this very request again": see
/// `sql/ledger/begin.sql`. SAME is checked first, as on the other backends:
/// a retry whose own lease expired keeps its run instead of taking it over.
const START: &str = "(NOT {same} AND \
     (r.request_hash IS NULL OR $6 IS NULL OR r.request_hash = $6) AND \
     (r.status = 'pending' OR (r.status = 'failed' AND r.attempts < $5) OR \
     (r.status = 'running' AND r.expires_ms <= {now} AND r.attempts < $5)))";

/// "This very request again": see `sql/ledger/begin.sql`. Never NULL (a
/// running row without a lease id is not SAME), so `NOT {same}` is too.
const SAME: &str = "(r.status = 'running' AND r.lease_id IS NOT NULL AND r.lease_id = $2)";

/// What differs between the dialects, as text pasted into the statements.
pub(crate) struct Dialect<'a> {
    /// The record table, quoted (and schema-qualified on PostgreSQL).
    pub(crate) runs: &'a str,
    /// The database clock in integer milliseconds since the Unix epoch.
    pub(crate) now: &'a str,
    /// The fence of a brand-new record.
    pub(crate) new_fence: &'a str,
    /// The fence of a run started on an existing record `r`.
    pub(crate) takeover_fence: &'a str,
    /// Whether placeholders are `?N` (SQLite) rather than `$N`.
    pub(crate) question_placeholders: bool,
}

/// The ledger's statements for one store, rendered once.
#[derive(Debug)]
pub(crate) struct LedgerStatements {
    pub(crate) schema: String,
    pub(crate) begin: String,
    pub(crate) renew: String,
    pub(crate) finish: String,
    pub(crate) get: String,
    pub(crate) purge: String,
    pub(crate) enqueue: String,
    pub(crate) retry: String,
    /// A record's status alone (SQLite's second statement of enqueue/retry).
    pub(crate) status: String,
    /// SQLite: a probe that returns a row when the record table has the
    /// `took_over` column, and the `ALTER TABLE` that adds it to a table
    /// made before it (`ensure_schema` runs them; PostgreSQL's schema adds
    /// it itself).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) took_over_column: Option<(String, String)>,
    /// For the query builder.
    runs: String,
    columns: String,
    now: String,
    question_placeholders: bool,
}

impl LedgerStatements {
    fn render(dialect: &Dialect<'_>, schema: &str, enqueue: &str, retry: &str) -> Self {
        let now = dialect.now;
        let start = render(START, &[("now", now), ("same", SAME)]);
        let columns = render(COLUMNS, &[("now", now)]);
        let values = [
            ("runs", dialect.runs),
            ("now", now),
            ("new_fence", dialect.new_fence),
            ("takeover_fence", dialect.takeover_fence),
            ("start", start.as_str()),
            ("same", SAME),
            ("columns", columns.as_str()),
        ];
        let statement = |template: &str| {
            let text = render(template, &values);
            if dialect.question_placeholders {
                question_marks(&text)
            } else {
                text
            }
        };
        Self {
            schema: schema.to_owned(),
            begin: statement(sql::BEGIN),
            renew: statement(sql::RENEW),
            finish: statement(sql::FINISH),
            get: statement(sql::GET),
            purge: statement(sql::PURGE),
            enqueue: statement(enqueue),
            retry: statement(retry),
            status: statement("SELECT status FROM {runs} WHERE key = $1"),
            took_over_column: None,
            runs: dialect.runs.to_owned(),
            columns,
            now: now.to_owned(),
            question_placeholders: dialect.question_placeholders,
        }
    }

    /// PostgreSQL: `fence_seq` is the lock table's sequence, `channel` the
    /// store's NOTIFY channel (waiters of locks and runs share it; an early
    /// wake-up is harmless).
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(
        schema: &crate::ident::Ident,
        table: &crate::ident::Ident,
        fence_seq: &str,
        channel: &str,
    ) -> Self {
        let runs_ident = table.with_suffix("_runs");
        let runs = format!("{}.{}", schema.quoted(), runs_ident.quoted());
        let now = "floor(extract(epoch FROM now()) * 1000)::bigint";
        let new_fence = format!("nextval('{fence_seq}')");
        // GREATEST: even a sequence that was reset, cached per session or
        // left behind by a migration cannot hand a key a lower fence.
        let takeover_fence = format!("GREATEST(nextval('{fence_seq}'), r.fence + 1)");
        let notify_fn = format!(
            "{}.{}",
            schema.quoted(),
            runs_ident.with_suffix("_notify").quoted()
        );
        // A literal in the function body: the channel is made of validated
        // identifiers, so it has no quotes to escape.
        let channel_literal = format!("'{channel}'");
        // The index names are derived to stay distinct within PostgreSQL's
        // 63 bytes (a long table name would cut both to `<table>_runs_`);
        // SQLite keeps whole names, so its are plain suffixes.
        let schema_sql = render(
            sql::PG_SCHEMA,
            &[
                ("runs", runs.as_str()),
                ("runs_status_index", &table.derived("_runs_status").quoted()),
                (
                    "runs_updated_index",
                    &table.derived("_runs_updated").quoted(),
                ),
                ("runs_notify_fn", notify_fn.as_str()),
                (
                    "runs_notify_trigger",
                    &runs_ident.with_suffix("_notify").quoted(),
                ),
                ("channel_literal", channel_literal.as_str()),
            ],
        );
        Self::render(
            &Dialect {
                runs: &runs,
                now,
                new_fence: &new_fence,
                takeover_fence: &takeover_fence,
                question_placeholders: false,
            },
            &schema_sql,
            sql::PG_ENQUEUE,
            sql::PG_RETRY,
        )
    }

    /// SQLite: `fence_table` is the lock table's fence counter table,
    /// `now` the host clock expression the lock statements use.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(table: &crate::ident::Ident, fence_table: &str, now: &str) -> Self {
        let runs_ident = table.with_suffix("_runs");
        let runs_fence_update = runs_ident.with_suffix("_fence_next");
        let runs = runs_ident.quoted();
        let new_fence = format!("(SELECT high + 1 FROM {fence_table} WHERE id = 0)");
        let takeover_fence =
            format!("max(coalesce(r.fence, 0), (SELECT high FROM {fence_table} WHERE id = 0)) + 1");
        let schema_sql = render(
            sql::SQLITE_SCHEMA,
            &[
                ("runs", runs.as_str()),
                (
                    "runs_status_index",
                    &runs_ident.with_suffix("_status").quoted(),
                ),
                (
                    "runs_updated_index",
                    &runs_ident.with_suffix("_updated").quoted(),
                ),
                (
                    "runs_fence_trigger",
                    &runs_ident.with_suffix("_fence_mark").quoted(),
                ),
                (
                    "runs_fence_insert_trigger",
                    &runs_ident.with_suffix("_fence_new").quoted(),
                ),
                ("runs_fence_update_trigger", &runs_fence_update.quoted()),
                // Pasted inside a string literal: a validated identifier
                // has no quote to escape.
                ("runs_fence_update_name", runs_fence_update.as_str()),
                ("lock_table", &table.quoted()),
                ("fence_table", fence_table),
            ],
        );
        let mut statements = Self::render(
            &Dialect {
                runs: &runs,
                now,
                new_fence: &new_fence,
                takeover_fence: &takeover_fence,
                question_placeholders: true,
            },
            &schema_sql,
            sql::SQLITE_ENQUEUE,
            sql::SQLITE_RETRY,
        );
        // A validated identifier has no quote to escape in the literal.
        statements.took_over_column = Some((
            format!(
                "SELECT 1 FROM pragma_table_info('{}') WHERE name = 'took_over'",
                runs_ident.as_str()
            ),
            format!("ALTER TABLE {runs} ADD COLUMN took_over INTEGER NOT NULL DEFAULT 0"),
        ));
        statements
    }

    /// The statement of one query page: the filter and order come from
    /// enums (no user text is pasted); the cursor, if any, is bound as the
    /// first two parameters (updated ms, key). One row more than the limit
    /// is read to know whether another page follows.
    pub(crate) fn query(&self, query: &RunQuery) -> String {
        let filter = match query.filter {
            StatusFilter::Is(status) => format!("status = '{}'", status.as_str()),
            StatusFilter::Unfinished => "status IN ('pending', 'running', 'failed')".to_owned(),
            StatusFilter::Stuck => format!("status = 'running' AND expires_ms <= {}", self.now),
            StatusFilter::All => "1 = 1".to_owned(),
        };
        let (direction, after) = match query.order {
            Order::OldestFirst => ("ASC", ">"),
            Order::NewestFirst => ("DESC", "<"),
        };
        let cursor = match (&query.after, self.question_placeholders) {
            (None, _) => String::new(),
            (Some(_), false) => format!(" AND (updated_ms, key) {after} ($1, $2)"),
            (Some(_), true) => format!(" AND (updated_ms, key) {after} (?1, ?2)"),
        };
        format!(
            "SELECT {} FROM {} WHERE {filter}{cursor} ORDER BY updated_ms {direction}, key {direction} LIMIT {}",
            self.columns,
            self.runs,
            u64::from(query.limit) + 1
        )
    }
}

/// `$N` → `?N` for SQLite. The shared statements use no `$` otherwise.
pub(crate) fn question_marks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A record as both dialects return it ([`COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunRow {
    key: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    fence: Option<i64>,
    owner: Option<String>,
    ms_left: Option<i64>,
    result: Option<Vec<u8>>,
    err0: Option<String>,
    err1: Option<String>,
    err2: Option<String>,
    err3: Option<String>,
    err4: Option<String>,
    request_hash: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    finished_ms: Option<i64>,
}

/// `begin`'s row: the record, whether it is now this request's run, and
/// whether this statement started it over a stuck run.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct BeginRow {
    #[sqlx(flatten)]
    run: RunRow,
    started: i32,
    took_over: i32,
}

fn bad(backend: &'static str, what: String) -> LockError {
    LockError::permanent(backend, "reading a run record", UnexpectedReply(what))
}

fn count(backend: &'static str, name: &str, value: i32) -> Result<u32, LockError> {
    u32::try_from(value).map_err(|_| bad(backend, format!("{name} is negative ({value})")))
}

fn millis(value: i64) -> std::time::SystemTime {
    time_from_unix_millis(u64::try_from(value).unwrap_or(0))
}

impl RunRow {
    pub(crate) fn into_record(self, backend: &'static str) -> Result<RunRecord, LockError> {
        let status: RunStatus = self
            .status
            .parse()
            .map_err(|_| bad(backend, format!("unknown status {:?}", self.status)))?;
        let errors = [self.err0, self.err1, self.err2, self.err3, self.err4]
            .into_iter()
            .flatten()
            .map(|text| RunError::from_json(backend, &text))
            .collect::<Result<Vec<_>, _>>()?;
        let request_hash = self
            .request_hash
            .map(RequestHash::new)
            .transpose()
            .map_err(|err| bad(backend, err.to_string()))?;
        let key = LockKey::new(self.key).map_err(|err| bad(backend, err.to_string()))?;
        Ok(RunRecord {
            key,
            status,
            attempts: count(backend, "attempts", self.attempts)?,
            max_attempts: count(backend, "max_attempts", self.max_attempts)?,
            fence: self.fence.map(|f| fence_from_db(backend, f)).transpose()?,
            owner: self.owner,
            lease_expires_in: self.ms_left.filter(|&ms| ms > 0).map(millis_left),
            result: self.result,
            errors: RunError::history(errors),
            request_hash,
            created_at: millis(self.created_ms),
            updated_at: millis(self.updated_ms),
            finished_at: self.finished_ms.map(millis),
        })
    }
}

impl BeginRow {
    pub(crate) fn into_outcome(self, backend: &'static str) -> Result<BeginOutcome, LockError> {
        let record = self.run.into_record(backend)?;
        if self.started == 1 {
            return Ok(BeginOutcome::Started {
                fence: record
                    .fence
                    .ok_or_else(|| bad(backend, "a started run has no fence".into()))?,
                attempt: record.attempts,
                took_over: self.took_over == 1,
            });
        }
        Ok(BeginOutcome::Existing(record))
    }
}

/// The bind values of a finish, in `finish.sql`'s order ($3..$7).
pub(crate) struct FinishBinds {
    pub(crate) succeeded: i32,
    pub(crate) retryable: i32,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) slot: i32,
    pub(crate) error: Option<String>,
}

impl FinishBinds {
    pub(crate) fn of(request: &FinishRequest) -> Self {
        match &request.finish {
            Finish::Succeeded { result } => Self {
                succeeded: 1,
                retryable: 0,
                result: result.clone(),
                slot: -1,
                error: None,
            },
            Finish::Failed { error } => Self {
                succeeded: 0,
                retryable: i32::from(error.retryable),
                result: None,
                slot: i32::try_from(error.slot()).unwrap_or(0),
                error: Some(error.to_json()),
            },
        }
    }
}

pub(crate) fn finish_outcome(
    backend: &'static str,
    status: Option<String>,
) -> Result<FinishOutcome, LockError> {
    match status {
        None => Ok(FinishOutcome::NotHeld),
        Some(status) => {
            Ok(FinishOutcome::Finished(status.parse().map_err(|_| {
                bad(backend, format!("unknown status {status:?}"))
            })?))
        }
    }
}

pub(crate) fn status_of(backend: &'static str, status: &str) -> Result<RunStatus, LockError> {
    status
        .parse()
        .map_err(|_| bad(backend, format!("unknown status {status:?}")))
}

pub(crate) fn enqueue_outcome(
    backend: &'static str,
    created: bool,
    status: &str,
) -> Result<EnqueueOutcome, LockError> {
    Ok(if created {
        EnqueueOutcome::Created
    } else {
        EnqueueOutcome::Exists(status_of(backend, status)?)
    })
}

pub(crate) fn retry_outcome(
    backend: &'static str,
    row: Option<(String, bool)>,
) -> Result<RetryOutcome, LockError> {
    Ok(match row {
        None => RetryOutcome::NotFound,
        Some((_, true)) => RetryOutcome::Requeued,
        Some((status, false)) => RetryOutcome::Unchanged(status_of(backend, &status)?),
    })
}

/// A page from the rows of [`LedgerStatements::query`] (limit + 1 read).
pub(crate) fn page(
    backend: &'static str,
    rows: Vec<RunRow>,
    limit: u32,
) -> Result<RunPage, LockError> {
    let mut records = rows
        .into_iter()
        .map(|row| row.into_record(backend))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = limit as usize;
    let next = (records.len() > limit).then(|| PageCursor::after(&records[limit - 1]));
    records.truncate(limit);
    Ok(RunPage { records, next })
}

/// The cursor's bind values: updated ms and key.
pub(crate) fn cursor_binds(query: &RunQuery) -> Option<(i64, String)> {
    query.after.as_ref().map(|c| {
        (
            i64::try_from(c.updated_ms).unwrap_or(i64::MAX),
            c.key.as_str().to_owned(),
        )
    })
}

/// A retention as the milliseconds `purge.sql` binds.
pub(crate) fn retention_millis(older_than: Duration) -> i64 {
    i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX)
}

/// The [`LedgerStore`](lockstore_api::ledger::LedgerStore) implementation,
/// written once for both stores: `$store` has `inner.connections`, `inner.ledger`
/// ([`LedgerStatements`]) and `inner.errors`, and the inherent methods
/// `waiters()`, `ledger_enqueue()` and `ledger_retry()` (the two
/// statements whose shape differs by dialect).
macro_rules! impl_ledger_store {
    ($store:ty, $backend:expr, $classify:path) => {
        impl $store {
            fn ledger_err(
                &self,
                what: &str,
                key: &str,
            ) -> impl FnOnce(sqlx::Error) -> lockstore_api::LockError + '_ {
                let what = format!("{what} {key}");
                move |err| self.inner.errors.map(&what, err, $classify)
            }
        }

        #[async_trait::async_trait]
        impl lockstore_api::ledger::LedgerStore for $store {
            fn backend_name(&self) -> &'static str {
                $backend
            }

            async fn begin(
                &self,
                request: &lockstore_api::ledger::BeginRequest,
            ) -> Result<lockstore_api::ledger::BeginOutcome, lockstore_api::LockError> {
                let row: $crate::ledger::BeginRow = $crate::connections::run!(
                    self.inner.connections,
                    fetch_one,
                    sqlx::query_as(&self.inner.ledger.begin)
                        .bind(request.key.as_str())
                        .bind(request.lease_id.to_string())
                        .bind(request.owner.as_str())
                        .bind($crate::shared::ttl_millis(request.ttl))
                        .bind(i32::try_from(request.max_attempts).unwrap_or(i32::MAX))
                        .bind(request.request_hash.as_ref().map(|h| h.as_str()))
                )
                .map_err(self.ledger_err("starting a run of", request.key.as_str()))?;
                row.into_outcome($backend)
            }

            async fn renew_run(
                &self,
                key: &lockstore_api::LockKey,
                lease_id: lockstore_api::LeaseId,
                ttl: lockstore_api::Ttl,
            ) -> Result<lockstore_api::RenewOutcome, lockstore_api::LockError> {
                let result = $crate::connections::run!(
                    self.inner.connections,
                    execute,
                    sqlx::query(&self.inner.ledger.renew)
                        .bind(key.as_str())
                        .bind(lease_id.to_string())
                        .bind($crate::shared::ttl_millis(ttl))
                )
                .map_err(self.ledger_err("renewing the run of", key.as_str()))?;
                Ok(match result.rows_affected() {
                    0 => lockstore_api::RenewOutcome::Lost,
                    _ => lockstore_api::RenewOutcome::Renewed,
                })
            }

            async fn finish(
                &self,
                request: &lockstore_api::ledger::FinishRequest,
            ) -> Result<lockstore_api::ledger::FinishOutcome, lockstore_api::LockError> {
                request.validate()?;
                let binds = $crate::ledger::FinishBinds::of(request);
                let status: Option<String> = $crate::connections::run!(
                    self.inner.connections,
                    fetch_optional,
                    sqlx::query_scalar(&self.inner.ledger.finish)
                        .bind(request.key.as_str())
                        .bind(request.lease_id.to_string())
                        .bind(binds.succeeded)
                        .bind(binds.retryable)
                        .bind(binds.result)
                        .bind(binds.slot)
                        .bind(binds.error)
                )
                .map_err(self.ledger_err("finishing the run of", request.key.as_str()))?;
                let outcome = $crate::ledger::finish_outcome($backend, status)?;
                if matches!(outcome, lockstore_api::ledger::FinishOutcome::Finished(_)) {
                    // After the commit: a woken waiter reads the finished record.
                    if let Some(waiters) = self.waiters() {
                        waiters.wake(request.key.as_str());
                    }
                }
                Ok(outcome)
            }

            async fn get(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Result<Option<lockstore_api::ledger::RunRecord>, lockstore_api::LockError> {
                let row: Option<$crate::ledger::RunRow> = $crate::connections::run!(
                    self.inner.connections,
                    fetch_optional,
                    sqlx::query_as(&self.inner.ledger.get).bind(key.as_str())
                )
                .map_err(self.ledger_err("reading the run record of", key.as_str()))?;
                row.map(|row| row.into_record($backend)).transpose()
            }

            async fn enqueue(
                &self,
                key: &lockstore_api::LockKey,
                request_hash: Option<&lockstore_api::ledger::RequestHash>,
            ) -> Result<lockstore_api::ledger::EnqueueOutcome, lockstore_api::LockError> {
                let (created, status) = self
                    .ledger_enqueue(key.as_str(), request_hash.map(|h| h.as_str()))
                    .await
                    .map_err(self.ledger_err("queueing", key.as_str()))?;
                $crate::ledger::enqueue_outcome($backend, created, &status)
            }

            async fn retry(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Result<lockstore_api::ledger::RetryOutcome, lockstore_api::LockError> {
                let row = self
                    .ledger_retry(key.as_str())
                    .await
                    .map_err(self.ledger_err("retrying", key.as_str()))?;
                let outcome = $crate::ledger::retry_outcome($backend, row)?;
                if outcome == lockstore_api::ledger::RetryOutcome::Requeued {
                    if let Some(waiters) = self.waiters() {
                        waiters.wake(key.as_str());
                    }
                }
                Ok(outcome)
            }

            async fn query(
                &self,
                query: &lockstore_api::ledger::RunQuery,
            ) -> Result<lockstore_api::ledger::RunPage, lockstore_api::LockError> {
                query.validate()?;
                let sql = self.inner.ledger.query(query);
                let mut statement = sqlx::query_as::<_, $crate::ledger::RunRow>(&sql);
                if let Some((updated_ms, key)) = $crate::ledger::cursor_binds(query) {
                    statement = statement.bind(updated_ms).bind(key);
                }
                let rows = $crate::connections::run!(self.inner.connections, fetch_all, statement)
                    .map_err(self.ledger_err("querying run records", ""))?;
                $crate::ledger::page($backend, rows, query.limit)
            }

            async fn purge(
                &self,
                older_than: std::time::Duration,
            ) -> Result<u64, lockstore_api::LockError> {
                let result = $crate::connections::run!(
                    self.inner.connections,
                    execute,
                    sqlx::query(&self.inner.ledger.purge)
                        .bind($crate::ledger::retention_millis(older_than))
                )
                .map_err(self.ledger_err("purging finished run records", ""))?;
                Ok(result.rows_affected())
            }

            fn finish_signal(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Option<lockstore_api::ReleaseSignal> {
                self.waiters().map(|w| w.subscribe(key.as_str()))
            }
        }
    };
}
pub(crate) use impl_ledger_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_placeholders_are_question_marks() {
        assert_eq!(question_marks("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
        assert_eq!(question_marks("$fn$ $"), "$fn$ $");
    }

    #[test]
    fn query_pastes_only_enum_text_and_binds_the_cursor() {
        let statements = LedgerStatements::render(
            &Dialect {
                runs: "\"t_runs\"",
                now: "NOW",
                new_fence: "NF",
                takeover_fence: "TF",
                question_placeholders: true,
            },
            "",
            "",
            "",
        );
        let mut query = RunQuery::new(StatusFilter::Stuck).newest_first().limit(7);
        assert!(statements.query(&query).ends_with(
            "WHERE status = 'running' AND expires_ms <= NOW ORDER BY updated_ms DESC, key DESC LIMIT 8"
        ));
        query.after = Some("5:k".parse().unwrap());
        assert!(
            statements
                .query(&query)
                .contains("AND (updated_ms, key) < (?1, ?2)")
        );
        assert!(!statements.begin.contains('$'), "{}", statements.begin);
        assert!(!statements.begin.contains('{'), "{}", statements.begin);
    }
}
