-- First half of `purge_idle`, in the same transaction as purge.sql: raise the
-- fence high-water mark past every fence in the table before any row goes,
-- so a purged key's next fence (high + 1) is still larger than its last.
UPDATE {fence_table}
SET high = max(high, coalesce((SELECT max(fence) FROM {table}), 0))
WHERE id = 0
