-- End a live lease and wake waiters, in one statement. $1 key, $2 lease id,
-- $3 the store's NOTIFY channel. One row back means released.
--
-- The row is kept (lease_id NULL) for per-key state; `purge_idle` deletes it
-- later. pg_notify is transactional: waiters are told only after the commit
-- that made the key free, so their retry cannot see it still held.
WITH released AS (
    UPDATE {table}
    SET lease_id = NULL, expires_at = now(), updated_at = now()
    WHERE key = $1 AND lease_id = $2 AND expires_at > now()
    RETURNING key
)
SELECT pg_notify($3, key) FROM released
