-- The execution ledger's table on PostgreSQL, beside the lock table; run by
-- `ensure_schema()` after the lock schema (same advisory lock, same
-- transaction). Times are integer milliseconds since the Unix epoch by the
-- server's clock, so both dialects share their statements.
CREATE TABLE IF NOT EXISTS {runs} (
    key          text COLLATE "C" PRIMARY KEY,
    status       text    NOT NULL,
    attempts     integer NOT NULL,
    max_attempts integer NOT NULL,
    fence        bigint,
    owner        text,
    lease_id     text,
    expires_ms   bigint,
    result       bytea,
    err0         text,
    err1         text,
    err2         text,
    err3         text,
    err4         text,
    request_hash text,
    created_ms   bigint  NOT NULL,
    updated_ms   bigint  NOT NULL,
    finished_ms  bigint,
    -- What the last begin of this row answered: 1 when it started a run
    -- over a stuck one (see begin.sql). Read by begin only.
    took_over    integer NOT NULL DEFAULT 0
);
-- A table made before `took_over` gets it here (checked first, because
-- ALTER TABLE locks the table out even when the column exists).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = '{runs}'::regclass AND attname = 'took_over' AND NOT attisdropped
    ) THEN
        ALTER TABLE {runs} ADD COLUMN took_over integer NOT NULL DEFAULT 0;
    END IF;
END
$$;
-- Queries by status walk this index in (updated, key) order.
CREATE INDEX IF NOT EXISTS {runs_status_index} ON {runs} (status, updated_ms, key);
CREATE INDEX IF NOT EXISTS {runs_updated_index} ON {runs} (updated_ms, key);

-- Waiters are woken by NOTIFY on the store's channel (payload: the key) when
-- a run ends, from a trigger, so the finish statement stays the same in
-- both dialects and the notice is sent only after the commit that ended it.
CREATE OR REPLACE FUNCTION {runs_notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify({channel_literal}, NEW.key);
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER {runs_notify_trigger}
    AFTER UPDATE OF status ON {runs}
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION {runs_notify_fn}();
