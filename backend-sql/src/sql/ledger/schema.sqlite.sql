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
    finished_ms  INTEGER
);
CREATE INDEX IF NOT EXISTS {runs_status_index} ON {runs} (status, updated_ms, key);
CREATE INDEX IF NOT EXISTS {runs_updated_index} ON {runs} (updated_ms, key);
-- Deleting a run (purge, or by hand) raises the lock table's fence
-- high-water mark past its fence, so the key's next run gets a larger one.
CREATE TRIGGER IF NOT EXISTS {runs_fence_trigger} BEFORE DELETE ON {runs}
WHEN OLD.fence IS NOT NULL
BEGIN
    UPDATE {fence_table} SET high = max(high, OLD.fence) WHERE id = 0;
END;
