//! Fenced writes: a row of the caller's own table written only if the
//! fence stored with it is lower than the writer's, in one statement.
//!
//! A lease's fencing token is only worth something if the resource checks
//! it. [`FencedUpsert`] renders that check for a table of the caller's, in
//! PostgreSQL's or SQLite's dialect (the same text but for the
//! placeholders):
//!
//! ```sql
//! INSERT INTO "t" ("key", "fence", "value") VALUES ($1, $2, $3)
//! ON CONFLICT ("key") DO UPDATE SET "fence" = excluded."fence", "value" = excluded."value"
//! WHERE "t"."fence" < excluded."fence"
//! ```
//!
//! One row changed means the write was applied: the row was absent, or its
//! stored fence was lower. No row changed means a writer with the same or a
//! higher fence wrote first, and this one is stale: a paused holder that
//! wakes after its lease was taken over cannot overwrite its successor's
//! row. The comparison is strict, so a run that writes the same row twice
//! sees its second write refused (its own fence is stored); write each row
//! once per run, or compare with the stored fence yourself.
//!
//! The statement is a plain upsert: it runs on any connection or inside any
//! transaction, and under PostgreSQL's row lock two writers of one key are
//! judged one after the other (the second sees the first's fence).

use lockstore_api::{FencingToken, LockError};

use crate::ident::Ident;

const BACKEND: &str = "sql";

/// An upsert of the caller's table that only a higher fence may apply.
///
/// Bind, in this order: the key columns, the fence
/// ([`fence_param`]), then the value columns. The key columns must be the
/// table's primary key or a unique constraint (`ON CONFLICT` needs one),
/// and the fence column a `bigint` (`INTEGER` on SQLite).
///
/// ```no_run
/// use lockstore_sql::fenced_write::{FencedUpsert, fence_param};
/// # async fn demo(pool: sqlx::PgPool, run: lockstore_api::ledger::RunGuard) -> Result<(), Box<dyn std::error::Error>> {
/// // CREATE TABLE partitions (day text PRIMARY KEY, fence bigint NOT NULL, rows bigint NOT NULL)
/// let upsert = FencedUpsert::new("partitions", ["day"], ["rows"]).postgres()?;
/// let applied = sqlx::query(upsert.sql())
///     .bind("2026-11-23")
///     .bind(fence_param(run.fence())?)
///     .bind(1234_i64)
///     .execute(&pool)
///     .await?
///     .rows_affected()
///     == 1;
/// if !applied {
///     // A newer run wrote this partition: stop, ours is stale.
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a fenced upsert does nothing until rendered with `postgres` or `sqlite`"]
pub struct FencedUpsert {
    schema: Option<String>,
    table: String,
    keys: Vec<String>,
    values: Vec<String>,
    fence: String,
}

/// A rendered [`FencedUpsert`]: the statement's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedStatement {
    sql: String,
    binds: usize,
}

impl FencedStatement {
    /// The statement, for `sqlx::query`.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// How many values it binds: keys, the fence, values.
    pub fn binds(&self) -> usize {
        self.binds
    }
}

impl FencedUpsert {
    /// An upsert of `table`, keyed by `keys`, writing `values`, with the
    /// fence in a column named `fence` (see [`FencedUpsert::fence_column`]).
    pub fn new<K, V>(
        table: impl Into<String>,
        keys: impl IntoIterator<Item = K>,
        values: impl IntoIterator<Item = V>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            schema: None,
            table: table.into(),
            keys: keys.into_iter().map(Into::into).collect(),
            values: values.into_iter().map(Into::into).collect(),
            fence: "fence".to_owned(),
        }
    }

    /// The table's schema (PostgreSQL; SQLite's attached database name).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The column holding the fence of the row's last write (default
    /// `fence`).
    pub fn fence_column(mut self, column: impl Into<String>) -> Self {
        self.fence = column.into();
        self
    }

    /// The statement in PostgreSQL's dialect (`$1`, `$2`, …).
    ///
    /// # Errors
    /// [`LockError::Config`] for a name that is not 1 to 63 ASCII letters,
    /// digits or underscores, no key column, or a column named twice.
    pub fn postgres(&self) -> Result<FencedStatement, LockError> {
        self.render(|n| format!("${n}"))
    }

    /// The statement in SQLite's dialect (`?1`, `?2`, …).
    ///
    /// # Errors
    /// As [`FencedUpsert::postgres`].
    pub fn sqlite(&self) -> Result<FencedStatement, LockError> {
        self.render(|n| format!("?{n}"))
    }

    fn render(&self, placeholder: impl Fn(usize) -> String) -> Result<FencedStatement, LockError> {
        let ident = |what: &str, name: &str| Ident::new(BACKEND, what, name, Ident::MAX_LEN);
        let table = ident("table", &self.table)?;
        let target = match &self.schema {
            Some(schema) => format!("{}.{}", ident("schema", schema)?.quoted(), table.quoted()),
            None => table.quoted(),
        };
        if self.keys.is_empty() {
            return Err(LockError::config(
                BACKEND,
                "a fenced upsert needs at least one key column (the table's primary key or a unique constraint)",
            ));
        }
        let keys = self
            .keys
            .iter()
            .map(|k| ident("key column", k))
            .collect::<Result<Vec<_>, _>>()?;
        let fence = ident("fence column", &self.fence)?;
        let values = self
            .values
            .iter()
            .map(|v| ident("value column", v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for column in keys.iter().chain([&fence]).chain(&values) {
            if !seen.insert(column.as_str()) {
                return Err(LockError::config(
                    BACKEND,
                    format!(
                        "column {:?} is named twice in a fenced upsert: keys, fence and values must differ",
                        column.as_str()
                    ),
                ));
            }
        }
        let columns: Vec<String> = keys
            .iter()
            .chain([&fence])
            .chain(&values)
            .map(Ident::quoted)
            .collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(placeholder).collect();
        let conflict: Vec<String> = keys.iter().map(Ident::quoted).collect();
        let set: Vec<String> = [&fence]
            .into_iter()
            .chain(&values)
            .map(|c| format!("{0} = excluded.{0}", c.quoted()))
            .collect();
        // The bare table name qualifies the stored row in both dialects
        // (PostgreSQL's implicit alias of a schema-qualified target).
        let sql = format!(
            "INSERT INTO {target} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} \
             WHERE {}.{} < excluded.{}",
            columns.join(", "),
            placeholders.join(", "),
            conflict.join(", "),
            set.join(", "),
            table.quoted(),
            fence.quoted(),
            fence.quoted(),
        );
        Ok(FencedStatement {
            sql,
            binds: columns.len(),
        })
    }
}

/// A fencing token as the `bigint` / `INTEGER` a fence column stores.
///
/// # Errors
/// [`LockError::InvalidArgument`] for a token above `i64::MAX` (no SQL
/// store issues one; another backend's token could be).
pub fn fence_param(fence: FencingToken) -> Result<i64, LockError> {
    i64::try_from(fence.get()).map_err(|_| LockError::InvalidArgument {
        name: "fence",
        reason: format!(
            "fencing token {} does not fit a signed 64-bit column",
            fence.get()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_upsert_per_dialect() {
        let upsert = FencedUpsert::new("rows", ["tenant", "day"], ["total"])
            .schema("app")
            .fence_column("written_by");
        let pg = upsert.postgres().unwrap();
        assert_eq!(
            pg.sql(),
            "INSERT INTO \"app\".\"rows\" (\"tenant\", \"day\", \"written_by\", \"total\") \
             VALUES ($1, $2, $3, $4) ON CONFLICT (\"tenant\", \"day\") DO UPDATE SET \
             \"written_by\" = excluded.\"written_by\", \"total\" = excluded.\"total\" \
             WHERE \"rows\".\"written_by\" < excluded.\"written_by\""
        );
        assert_eq!(pg.binds(), 4);
        let lite = FencedUpsert::new("rows", ["k"], Vec::<String>::new())
            .sqlite()
            .unwrap();
        assert!(lite.sql().contains("VALUES (?1, ?2)"), "{}", lite.sql());
    }

    #[test]
    fn refuses_bad_names_before_any_statement() {
        for upsert in [
            FencedUpsert::new("t; DROP", ["k"], ["v"]),
            FencedUpsert::new("t", Vec::<String>::new(), ["v"]),
            FencedUpsert::new("t", ["k"], ["fence"]),
            FencedUpsert::new("t", ["k\""], ["v"]),
        ] {
            assert!(matches!(upsert.postgres(), Err(LockError::Config { .. })));
        }
        assert!(fence_param(FencingToken::new(u64::MAX)).is_err());
        assert_eq!(fence_param(FencingToken::new(7)).unwrap(), 7);
    }
}
