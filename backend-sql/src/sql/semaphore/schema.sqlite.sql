-- Semaphores on SQLite, beside the lock table; run by `ensure_schema()` in
-- the same transaction. One row per semaphore key (see acquire.sql).
-- Fences come from the file's fence counter, which these triggers raise to
-- every fence granted or deleted here, as the lock table's do: so a
-- permit's fence is above every earlier token of the file.
CREATE TABLE IF NOT EXISTS {sems} (
    key        TEXT    PRIMARY KEY NOT NULL,
    lim        INTEGER NOT NULL,
    fence      INTEGER NOT NULL,
    permits    TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS {sems_fence_mark} BEFORE DELETE ON {sems}
BEGIN
    UPDATE {fence_table} SET high = max(high, OLD.fence) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS {sems_fence_new} AFTER INSERT ON {sems}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS {sems_fence_next} AFTER UPDATE OF fence ON {sems}
WHEN NEW.fence > (SELECT high FROM {fence_table} WHERE id = 0)
BEGIN
    UPDATE {fence_table} SET high = NEW.fence WHERE id = 0;
END;
