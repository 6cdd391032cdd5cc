-- Delete finished records not updated for $1 ms; never an unfinished one.
-- Fences do not go back: PostgreSQL draws them from the sequence, and on
-- SQLite a trigger raises the high-water mark past every deleted fence.
DELETE FROM {runs}
WHERE status IN ('succeeded', 'ignored') AND updated_ms <= {now} - $1
