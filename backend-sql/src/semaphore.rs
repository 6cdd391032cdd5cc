//! Semaphores on SQL: one set of statements for PostgreSQL and SQLite,
//! rendered per dialect, and one
//! [`SemaphoreStore`](lockstore_api::semaphore::SemaphoreStore)
//! implementation written once for both stores.
//!
//! A semaphore key is one row of `<table>_semaphores` holding its limit,
//! its last fence and its permits as a JSON array; `sql/semaphore/acquire.sql`
//! says why one row. The statements are shared: the dialects differ only in
//! the JSON functions, the clock, the fence expressions (PostgreSQL's
//! sequence, SQLite's fence counter — the locks' own, so a permit's fence is
//! above every earlier token of the key) and the placeholder style. Each
//! operation is one statement; PostgreSQL's release also notifies waiters
//! in it (`pg_notify`, on the store's channel, payload
//! [`wake_name`]), SQLite wakes waiters of this process.

use lockstore_api::semaphore::{PermitOutcome, Permits};
use lockstore_api::{Holder, LeaseId, LockError, LockKey, UnexpectedReply};
use serde::Deserialize;

use crate::ident::render;
use crate::shared::{fence_from_db, millis_left};

mod sql {
    pub(super) const ACQUIRE: &str = include_str!("sql/semaphore/acquire.sql");
    pub(super) const RENEW: &str = include_str!("sql/semaphore/renew.sql");
    pub(super) const RELEASE: &str = include_str!("sql/semaphore/release.sql");
    pub(super) const INSPECT: &str = include_str!("sql/semaphore/inspect.sql");
    #[cfg(feature = "postgres")]
    pub(super) const PG_SCHEMA: &str = include_str!("sql/semaphore/schema.postgres.sql");
    #[cfg(feature = "sqlite")]
    pub(super) const SQLITE_SCHEMA: &str = include_str!("sql/semaphore/schema.sqlite.sql");
}

/// Whether a grant is made: not the caller's own live permit, the limit
/// agrees, and a permit is free. Expanded before its parts.
const GRANT: &str = "(NOT {mine} AND NOT {mismatch} AND {live_count} < $5)";
const MISMATCH: &str = "(s.lim <> $5 AND {live_count} > 0)";
const MINE: &str = "EXISTS (SELECT 1 FROM {elements} AS m \
     WHERE m.value ->> 'id' = $2 AND CAST(m.value ->> 'exp' AS bigint) > {now})";
const LIVE_COUNT: &str = "(SELECT count(*) FROM {elements} AS c \
     WHERE CAST(c.value ->> 'exp' AS bigint) > {now})";

/// What differs between the dialects, as text pasted into the statements.
struct Dialect<'a> {
    sems: &'a str,
    now: &'a str,
    new_fence: &'a str,
    /// The fence of a grant on an existing row `s`: above its last and the
    /// counter, computed once per statement.
    grant_fence: &'a str,
    elements: &'a str,
    agg: &'a str,
    object: &'a str,
    array: &'a str,
    json: &'a str,
    empty: &'a str,
    permits_text: &'a str,
    question_placeholders: bool,
}

/// The semaphore statements of one store, rendered once.
#[derive(Debug)]
pub(crate) struct SemaphoreStatements {
    pub(crate) schema: String,
    pub(crate) acquire: String,
    pub(crate) renew: String,
    pub(crate) release: String,
    pub(crate) inspect: String,
}

impl SemaphoreStatements {
    fn render(dialect: &Dialect<'_>, schema: String) -> Self {
        let values = [
            ("grant", GRANT),
            ("mismatch", MISMATCH),
            ("mine", MINE),
            ("live_count", LIVE_COUNT),
            ("sems", dialect.sems),
            ("now", dialect.now),
            ("new_fence", dialect.new_fence),
            ("grant_fence", dialect.grant_fence),
            ("elements", dialect.elements),
            ("agg", dialect.agg),
            ("object", dialect.object),
            ("array", dialect.array),
            ("json", dialect.json),
            ("empty", dialect.empty),
            ("permits_text", dialect.permits_text),
        ];
        let statement = |template: &str| {
            let text = render(template, &values);
            if dialect.question_placeholders {
                crate::ledger::question_marks(&text)
            } else {
                text
            }
        };
        Self {
            schema,
            acquire: statement(sql::ACQUIRE),
            renew: statement(sql::RENEW),
            release: statement(sql::RELEASE),
            inspect: statement(sql::INSPECT),
        }
    }

    /// PostgreSQL: `fence_seq` is the lock table's sequence; the release
    /// notifies on `$3` with payload `$4`.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(
        schema: &crate::ident::Ident,
        table: &crate::ident::Ident,
        fence_seq: &str,
    ) -> Self {
        let sems = format!(
            "{}.{}",
            schema.quoted(),
            table.with_suffix("_semaphores").quoted()
        );
        let new_fence = format!("nextval('{fence_seq}')");
        let mut statements = Self::render(
            &Dialect {
                sems: &sems,
                now: "floor(extract(epoch FROM now()) * 1000)::bigint",
                new_fence: &new_fence,
                // The fence the INSERT drew (once) for this statement: a
                // second nextval() would skip one. GREATEST keeps the key's
                // fences rising even if the sequence went back.
                grant_fence: "GREATEST(excluded.fence, s.fence + 1)",
                elements: "jsonb_array_elements(s.permits)",
                agg: "jsonb_agg",
                object: "jsonb_build_object",
                array: "jsonb_build_array",
                json: "to_jsonb",
                empty: "'[]'::jsonb",
                permits_text: "permits::text",
                question_placeholders: false,
            },
            render(sql::PG_SCHEMA, &[("sems", sems.as_str())]),
        );
        // pg_notify is transactional: waiters hear of the release only after
        // the commit that freed the permit.
        statements.release = format!(
            "WITH released AS ({}) SELECT pg_notify($3, $4) FROM released",
            statements.release
        );
        statements
    }

    /// SQLite: `fence_table` is the lock table's fence counter table, `now`
    /// the host clock expression the lock statements use.
    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite(table: &crate::ident::Ident, fence_table: &str, now: &str) -> Self {
        let sems_ident = table.with_suffix("_semaphores");
        let sems = sems_ident.quoted();
        let new_fence = format!("(SELECT high + 1 FROM {fence_table} WHERE id = 0)");
        let grant_fence = format!("max({new_fence}, s.fence + 1)");
        let schema = render(
            sql::SQLITE_SCHEMA,
            &[
                (
                    "sems_fence_mark",
                    &sems_ident.with_suffix("_fence_mark").quoted(),
                ),
                (
                    "sems_fence_new",
                    &sems_ident.with_suffix("_fence_new").quoted(),
                ),
                (
                    "sems_fence_next",
                    &sems_ident.with_suffix("_fence_next").quoted(),
                ),
                ("sems", sems.as_str()),
                ("fence_table", fence_table),
            ],
        );
        Self::render(
            &Dialect {
                sems: &sems,
                now,
                new_fence: &new_fence,
                grant_fence: &grant_fence,
                elements: "json_each(s.permits)",
                agg: "json_group_array",
                object: "json_object",
                array: "json_array",
                json: "json",
                empty: "json('[]')",
                permits_text: "permits",
                question_placeholders: true,
            },
            schema,
        )
    }
}

/// The name waiters of a semaphore key wait on: apart from the lock of the
/// same key (a lock key that happens to look like it only wakes early,
/// which is harmless).
pub(crate) fn wake_name(key: &LockKey) -> String {
    format!("semaphore\u{1}{}", key.as_str())
}

/// One permit as stored in the row's JSON array.
#[derive(Debug, Deserialize)]
struct StoredPermit {
    id: String,
    owner: String,
    fence: i64,
    exp: i64,
}

/// A semaphore row as the acquire and inspect statements return it.
pub(crate) struct SemaphoreRow {
    pub(crate) limit: i64,
    pub(crate) permits: String,
    pub(crate) now_ms: i64,
}

impl SemaphoreRow {
    fn live(&self, backend: &'static str) -> Result<Vec<StoredPermit>, LockError> {
        let permits: Vec<StoredPermit> = serde_json::from_str(&self.permits).map_err(|err| {
            LockError::permanent(backend, "a semaphore row holds malformed permits", err)
        })?;
        Ok(permits
            .into_iter()
            .filter(|permit| permit.exp > self.now_ms)
            .collect())
    }

    fn stored_limit(&self, backend: &'static str) -> Result<u32, LockError> {
        u32::try_from(self.limit).map_err(|_| {
            LockError::permanent(
                backend,
                "a semaphore row has an invalid limit",
                UnexpectedReply(format!("limit {}", self.limit)),
            )
        })
    }

    fn permits(
        &self,
        backend: &'static str,
        live: Vec<StoredPermit>,
    ) -> Result<Permits, LockError> {
        let holders = live
            .into_iter()
            .map(|permit| {
                Ok(Holder::new(
                    permit.owner,
                    fence_from_db(backend, permit.fence)?,
                    millis_left(permit.exp - self.now_ms),
                ))
            })
            .collect::<Result<Vec<_>, LockError>>()?;
        Ok(Permits::new(self.stored_limit(backend)?, holders))
    }

    /// What the row an acquire left means for `permit_id`: its permit in
    /// the array is a grant; otherwise a limit mismatch, or a refusal.
    pub(crate) fn into_outcome(
        self,
        backend: &'static str,
        key: &LockKey,
        permit_id: LeaseId,
        requested: u32,
    ) -> Result<PermitOutcome, LockError> {
        let live = self.live(backend)?;
        let stored = self.stored_limit(backend)?;
        if stored != requested && !live.is_empty() {
            return Err(LockError::LimitMismatch {
                key: key.clone(),
                requested,
                stored,
            });
        }
        let id = permit_id.to_string();
        if let Some(mine) = live.iter().find(|permit| permit.id == id) {
            return Ok(PermitOutcome::Granted {
                fence: fence_from_db(backend, mine.fence)?,
            });
        }
        Ok(PermitOutcome::Refused(self.permits(backend, live)?))
    }

    /// The live permits, if any.
    pub(crate) fn into_permits(self, backend: &'static str) -> Result<Option<Permits>, LockError> {
        let live = self.live(backend)?;
        if live.is_empty() {
            return Ok(None);
        }
        self.permits(backend, live).map(Some)
    }
}

/// Implements `SemaphoreStore` for `$store`, which provides
/// `inner.semaphore` (its [`SemaphoreStatements`]), `inner.connections`,
/// `waiters()` and `semaphore_notify()` (PostgreSQL's channel, bound as the
/// release's `$3`/`$4`; `None` on SQLite).
macro_rules! impl_semaphore_store {
    ($store:ty, $backend:expr, $classify:path) => {
        #[async_trait::async_trait]
        impl lockstore_api::semaphore::SemaphoreStore for $store {
            fn semaphore_backend_name(&self) -> &'static str {
                $backend
            }

            async fn try_acquire_permit(
                &self,
                request: &lockstore_api::semaphore::PermitRequest,
            ) -> Result<lockstore_api::semaphore::PermitOutcome, lockstore_api::LockError> {
                use sqlx::Row as _;
                let row = $crate::connections::run!(
                    self.inner.connections,
                    fetch_one,
                    sqlx::query(&self.inner.semaphore.acquire)
                        .bind(request.key.as_str())
                        .bind(request.permit_id.to_string())
                        .bind(request.owner.as_str())
                        .bind($crate::shared::ttl_millis(request.ttl))
                        .bind(i64::from(request.limit.get()))
                )
                .and_then(|row| {
                    Ok($crate::semaphore::SemaphoreRow {
                        limit: row.try_get("lim")?,
                        permits: row.try_get("permits")?,
                        now_ms: row.try_get("now_ms")?,
                    })
                })
                .map_err(self.map_err("acquiring a permit of", &request.key))?;
                row.into_outcome(
                    $backend,
                    &request.key,
                    request.permit_id,
                    request.limit.get(),
                )
            }

            async fn renew_permit(
                &self,
                key: &lockstore_api::LockKey,
                permit_id: lockstore_api::LeaseId,
                ttl: lockstore_api::Ttl,
            ) -> Result<lockstore_api::RenewOutcome, lockstore_api::LockError> {
                let row = $crate::connections::run!(
                    self.inner.connections,
                    fetch_optional,
                    sqlx::query(&self.inner.semaphore.renew)
                        .bind(key.as_str())
                        .bind(permit_id.to_string())
                        .bind($crate::shared::ttl_millis(ttl))
                )
                .map_err(self.map_err("renewing a permit of", key))?;
                Ok(match row {
                    Some(_) => lockstore_api::RenewOutcome::Renewed,
                    None => lockstore_api::RenewOutcome::Lost,
                })
            }

            async fn release_permit(
                &self,
                key: &lockstore_api::LockKey,
                permit_id: lockstore_api::LeaseId,
            ) -> Result<lockstore_api::ReleaseOutcome, lockstore_api::LockError> {
                let wake = $crate::semaphore::wake_name(key);
                let mut query = sqlx::query(&self.inner.semaphore.release)
                    .bind(key.as_str())
                    .bind(permit_id.to_string());
                if let Some(channel) = self.semaphore_notify() {
                    query = query.bind(channel).bind(wake.clone());
                }
                let row = $crate::connections::run!(self.inner.connections, fetch_optional, query)
                    .map_err(self.map_err("releasing a permit of", key))?;
                if row.is_none() {
                    return Ok(lockstore_api::ReleaseOutcome::NotHeld);
                }
                // After the commit: a woken waiter's retry sees the permit free.
                if let Some(waiters) = self.waiters() {
                    waiters.wake(&wake);
                }
                Ok(lockstore_api::ReleaseOutcome::Released)
            }

            async fn inspect_permits(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Result<Option<lockstore_api::semaphore::Permits>, lockstore_api::LockError> {
                use sqlx::Row as _;
                let row = $crate::connections::run!(
                    self.inner.connections,
                    fetch_optional,
                    sqlx::query(&self.inner.semaphore.inspect).bind(key.as_str())
                )
                .and_then(|row| {
                    row.map(|row| {
                        Ok::<_, sqlx::Error>($crate::semaphore::SemaphoreRow {
                            limit: row.try_get("lim")?,
                            permits: row.try_get("permits")?,
                            now_ms: row.try_get("now_ms")?,
                        })
                    })
                    .transpose()
                })
                .map_err(self.map_err("inspecting the permits of", key))?;
                match row {
                    Some(row) => row.into_permits($backend),
                    None => Ok(None),
                }
            }

            fn permit_release_signal(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Option<lockstore_api::ReleaseSignal> {
                self.waiters()
                    .map(|w| w.subscribe(&$crate::semaphore::wake_name(key)))
            }
        }
    };
}

pub(crate) use impl_semaphore_store;
