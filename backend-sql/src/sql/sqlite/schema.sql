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

-- The fence counter, SQLite's stand-in for PostgreSQL's sequence: at least
-- every fence ever issued, to a lock or to a run of the ledger, and every
-- fence of a row ever deleted. A new fence is one more than the larger of
-- this and the row's own, so it is larger than every earlier token of the
-- file, whatever the key and whether lock or run (the ledger's table has
-- the same triggers, and the ledger schema catches an older file up).
-- The triggers raise it in the same statement that issues or deletes the
-- fence, whoever runs it (acquire, `purge_idle` or an operator by hand). A
-- write of the row per issued fence costs little: SQLite serialises the
-- writers of a file anyway, and a holder re-acquiring keeps its fence (the
-- WHEN clause) and writes nothing here.
CREATE TABLE IF NOT EXISTS {fence_table} (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    high INTEGER NOT NULL
);
INSERT OR IGNORE INTO {fence_table} (id, high) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS {fence_trigger} BEFORE DELETE ON {table}
BEGIN
    UPDATE {fence_table} SET high = max(high, OLD.fence) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS {fence_insert_trigger} AFTER INSERT ON {table}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS {fence_update_trigger} AFTER UPDATE OF fence ON {table}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
