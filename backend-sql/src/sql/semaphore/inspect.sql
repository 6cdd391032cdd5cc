-- A semaphore's row as it is, read-only; live permits are picked out by
-- the caller against `now_ms`. $1 key.
SELECT lim, {permits_text} AS permits, {now} AS now_ms FROM {sems} AS s WHERE key = $1
