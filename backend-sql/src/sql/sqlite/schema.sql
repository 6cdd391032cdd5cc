-- The lockstore schema for SQLite. Idempotent: `ensure_schema()` runs it on
-- every call. Times are integer milliseconds since the Unix epoch by the host
-- clock (all processes sharing the file share that clock).

-- One row per key that was ever taken and not yet purged. Released rows are
-- kept (lease_id NULL); `purge_idle` deletes rows idle for long enough.
-- Columns added later (the execution ledger: status, attempts, result,
-- error) are nullable or defaulted and every statement names its columns,
-- so adding them with ALTER TABLE ... ADD COLUMN is not a breaking migration.
CREATE TABLE IF NOT EXISTS {table} (
    key         TEXT    PRIMARY KEY NOT NULL,
    lease_id    TEXT,
    owner       TEXT    NOT NULL,
    fence       INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The fence high-water mark: at least the fence of every row ever deleted.
-- SQLite has no sequences. Acquire never writes this row (so it is not a
-- hot spot); the trigger below raises it inside every DELETE of a lock row,
-- whoever runs it (`purge_idle` or an operator by hand), in the same
-- statement, before the row is gone. A new row's first fence is `high + 1`.
CREATE TABLE IF NOT EXISTS {fence_table} (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    high INTEGER NOT NULL
);
INSERT OR IGNORE INTO {fence_table} (id, high) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS {fence_trigger} BEFORE DELETE ON {table}
BEGIN
    UPDATE {fence_table} SET high = max(high, OLD.fence) WHERE id = 0;
END;
