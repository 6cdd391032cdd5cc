-- The execution ledger's table on SQLite, beside the lock table. Times are
-- integer milliseconds since the Unix epoch by the host clock.
CREATE TABLE IF NOT EXISTS {runs} (
    key          TEXT    PRIMARY KEY NOT NULL,
    status       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    fence        INTEGER,
    owner        TEXT,
    lease_id     TEXT,
    expires_ms   INTEGER,
    result       BLOB,
    err0         TEXT,
    err1         TEXT,
    err2         TEXT,
    err3         TEXT,
    err4         TEXT,
    request_hash TEXT,
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    finished_ms  INTEGER,
    -- What the last begin of this row answered: 1 when it started a run
    -- over a stuck one (see begin.sql). Read by begin only. A file made
    -- before it gets it from `ensure_schema` (SQLite has no ADD COLUMN IF
    -- NOT EXISTS).
    took_over    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {runs_status_index} ON {runs} (status, updated_ms, key);
CREATE INDEX IF NOT EXISTS {runs_updated_index} ON {runs} (updated_ms, key);
-- Deleting a run (purge, or by hand) raises the lock table's fence
-- counter past its fence, so the key's next run gets a larger one.
CREATE TRIGGER IF NOT EXISTS {runs_fence_trigger} BEFORE DELETE ON {runs}
WHEN OLD.fence IS NOT NULL
BEGIN
    UPDATE {fence_table} SET high = max(high, OLD.fence) WHERE id = 0;
END;
-- A file made before locks and runs shared the counter (when it was raised
-- by deletes only) has fences above it: catch it up once, in the same
-- transaction (`ensure_schema` runs this under BEGIN IMMEDIATE) that
-- creates the last trigger below, whose existence says it was done. From
-- then on every fence issued raises the counter itself.
UPDATE {fence_table} SET high = max(
    high,
    coalesce((SELECT max(fence) FROM {lock_table}), 0),
    coalesce((SELECT max(fence) FROM {runs}), 0)
)
WHERE id = 0 AND NOT EXISTS (
    SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = '{runs_fence_update_name}'
);
-- Every fence a run is given raises the counter, so a lock's next fence is
-- above it (a run's fences come from the same counter: begin.sql).
CREATE TRIGGER IF NOT EXISTS {runs_fence_insert_trigger} AFTER INSERT ON {runs}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS {runs_fence_update_trigger} AFTER UPDATE OF fence ON {runs}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
