//! The [`LockStore`](lockstore_api::LockStore) implementation, written once
//! for both stores.
//!
//! Acquire, renew and inspect are the same code in both dialects: only the
//! statement text differs, and each store renders its own at build time
//! (`src/sql/`). Release differs in what happens after the row is freed —
//! PostgreSQL notifies other processes inside the statement
//! (`pg_notify`), SQLite can only wake waiters of this process — so each
//! store supplies `release_row()` (runs its release statement, true if a
//! row was released), `waiters()` (the in-process wake-ups, if
//! any) and `bind_waiting()` (PostgreSQL tells its acquire statement
//! whether the caller waits, so that a refusal asks for a NOTIFY) and
//! `execute_schema()` (runs the DDL as one transaction: PostgreSQL's one
//! simple query is one, SQLite needs an explicit `BEGIN IMMEDIATE`).
//! Everything else comes from `inner.connections` (statements run through
//! `connections::run!`), `inner.sql` and
//! `inner.errors`, which both stores have. The bodies of both stores'
//! `ensure_schema` and `purge_idle` are here too; the stores keep the
//! public, documented methods.

/// Implements `LockStore` for `$store` (see the module docs for what the
/// store provides); `$backend` is its backend name, `$classify` its error
/// classifier.
macro_rules! impl_lock_store {
    ($store:ty, $backend:expr, $classify:path) => {
        impl $store {
            /// `ensure_schema`'s work: the lock and ledger DDL in one
            /// transaction, by the store's `execute_schema`.
            async fn run_schema(&self) -> Result<(), lockstore_api::LockError> {
                let schema = format!(
                    "{}\n{}\n{}",
                    self.inner.sql.schema, self.inner.ledger.schema, self.inner.semaphore.schema
                );
                self.execute_schema(&schema).await.map_err(|err| {
                    self.inner
                        .errors
                        .map("creating the lock table", err, $classify)
                })
            }

            /// `purge_idle`'s work: the purge statement, rows deleted.
            async fn run_purge_idle(
                &self,
                older_than: std::time::Duration,
            ) -> Result<u64, lockstore_api::LockError> {
                let result = $crate::connections::run!(
                    self.inner.connections,
                    execute,
                    sqlx::query(&self.inner.sql.purge)
                        .bind($crate::shared::idle_millis(older_than)?)
                )
                .map_err(|err| self.inner.errors.map("purging idle locks", err, $classify))?;
                Ok(result.rows_affected())
            }

            fn map_err(
                &self,
                what: &str,
                key: &lockstore_api::LockKey,
            ) -> impl FnOnce(sqlx::Error) -> lockstore_api::LockError + '_ {
                let what = format!("{what} {key}");
                move |err| self.inner.errors.map(&what, err, $classify)
            }
        }

        #[async_trait::async_trait]
        impl lockstore_api::LockStore for $store {
            fn backend_name(&self) -> &'static str {
                $backend
            }

            async fn try_acquire(
                &self,
                request: &lockstore_api::AcquireRequest,
            ) -> Result<lockstore_api::AcquireOutcome, lockstore_api::LockError> {
                // One statement, one row. PostgreSQL's returns none only when
                // the key's row appeared after the statement's snapshot (see
                // its acquire.sql): run it again, with a snapshot that has it.
                for _ in 0..$crate::shared::ACQUIRE_STATEMENT_RUNS {
                    let row = sqlx::query(&self.inner.sql.acquire)
                        .bind(request.key.as_str())
                        .bind(request.lease_id.to_string())
                        .bind(request.owner.as_str())
                        .bind($crate::shared::ttl_millis(request.ttl));
                    let row = $crate::connections::run!(
                        self.inner.connections,
                        fetch_optional,
                        self.bind_waiting(row, request.key.as_str())
                    )
                    .and_then(|row| {
                        row.map(|row| $crate::shared::AcquireRow::from_row(&row))
                            .transpose()
                    })
                    .map_err(self.map_err("acquiring", &request.key))?;
                    if let Some(row) = row {
                        return row.into_outcome($backend);
                    }
                }
                Err(lockstore_api::LockError::retryable(
                    $backend,
                    format!(
                        "acquiring {}: the key's row was re-created under {} attempts in a row",
                        request.key,
                        $crate::shared::ACQUIRE_STATEMENT_RUNS
                    ),
                    lockstore_api::UnexpectedReply("heavy contention on one new key".into()),
                ))
            }

            async fn renew(
                &self,
                key: &lockstore_api::LockKey,
                lease_id: lockstore_api::LeaseId,
                ttl: lockstore_api::Ttl,
            ) -> Result<lockstore_api::RenewOutcome, lockstore_api::LockError> {
                let result = $crate::connections::run!(
                    self.inner.connections,
                    execute,
                    sqlx::query(&self.inner.sql.renew)
                        .bind(key.as_str())
                        .bind(lease_id.to_string())
                        .bind($crate::shared::ttl_millis(ttl))
                )
                .map_err(self.map_err("renewing", key))?;
                Ok(match result.rows_affected() {
                    0 => lockstore_api::RenewOutcome::Lost,
                    _ => lockstore_api::RenewOutcome::Renewed,
                })
            }

            async fn release(
                &self,
                key: &lockstore_api::LockKey,
                lease_id: lockstore_api::LeaseId,
            ) -> Result<lockstore_api::ReleaseOutcome, lockstore_api::LockError> {
                let released = self
                    .release_row(key.as_str(), lease_id)
                    .await
                    .map_err(self.map_err("releasing", key))?;
                if !released {
                    return Ok(lockstore_api::ReleaseOutcome::NotHeld);
                }
                // After the commit: a woken waiter's retry sees the key free.
                if let Some(waiters) = self.waiters() {
                    waiters.wake(key.as_str());
                }
                Ok(lockstore_api::ReleaseOutcome::Released)
            }

            async fn inspect(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Result<Option<lockstore_api::Holder>, lockstore_api::LockError> {
                use sqlx::Row as _;
                let map = self.map_err("inspecting", key);
                let row = $crate::connections::run!(
                    self.inner.connections,
                    fetch_optional,
                    sqlx::query(&self.inner.sql.inspect).bind(key.as_str())
                )
                .and_then(|row| {
                    row.map(|row| {
                        Ok::<_, sqlx::Error>((
                            row.try_get::<String, _>("owner")?,
                            row.try_get::<i64, _>("fence")?,
                            row.try_get::<i64, _>("ms_left")?,
                        ))
                    })
                    .transpose()
                })
                .map_err(map)?;
                row.map(|(owner, fence, ms_left)| {
                    Ok(lockstore_api::Holder::new(
                        owner,
                        $crate::shared::fence_from_db($backend, fence)?,
                        $crate::shared::millis_left(ms_left),
                    ))
                })
                .transpose()
            }

            fn release_signal(
                &self,
                key: &lockstore_api::LockKey,
            ) -> Option<lockstore_api::ReleaseSignal> {
                self.waiters().map(|w| w.subscribe(key.as_str()))
            }
        }
    };
}

pub(crate) use impl_lock_store;
