-- The lockstore schema for PostgreSQL. Idempotent: `ensure_schema()` runs it
-- on every call, as one simple-protocol query, i.e. one implicit transaction,
-- serialised per schema by a transaction-scoped advisory lock (two processes
-- starting at once would otherwise race on the catalog). That lock ends with
-- the transaction: it cannot leak through the pool, and it is never used as
-- a lock for users.
SELECT pg_advisory_xact_lock(hashtext({schema_lock_key}));
--
-- The next line creates the schema, except for `public` (CREATE SCHEMA checks
-- the database's CREATE privilege even when the schema exists).
{schema_ddl}

-- Fencing tokens for every key of the table. A sequence only moves forward:
-- not on rollback, not on row deletion, and it is WAL-logged, so a restart
-- never hands out a value twice (after a crash it may skip ahead, never back).
-- CACHE 1 (PostgreSQL's default, said out loud): a session cache would hand
-- out values out of order across pooled connections. It must never be reset,
-- cached or left out of a migration; acquire.sql's GREATEST keeps each key's
-- fence rising even then, but a brand-new key would start low.
CREATE SEQUENCE IF NOT EXISTS {fence_seq} AS bigint MINVALUE 1 CACHE 1 NO CYCLE;

-- One row per key that was ever taken and not yet purged. Released rows are
-- kept (lease_id NULL) so per-key state can live on them; `purge_idle` deletes
-- rows idle for long enough. Columns added later (the execution ledger:
-- status, attempts, result, error) are nullable or defaulted and every
-- statement names its columns, so adding them is not a breaking migration.
CREATE TABLE IF NOT EXISTS {table} (
    key         text COLLATE "C" PRIMARY KEY,
    lease_id    text,
    owner       text        NOT NULL,
    fence       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- The fence of the lease a waiting acquire was refused by: its release
-- notifies (acquire.sql, release.sql). Added after the table's first
-- version; a table made before gets it here. Checked first, because ALTER
-- TABLE locks the table out even when the column exists.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = '{table}'::regclass AND attname = 'wake_fence' AND NOT attisdropped
    ) THEN
        ALTER TABLE {table} ADD COLUMN wake_fence bigint;
    END IF;
END
$$;
