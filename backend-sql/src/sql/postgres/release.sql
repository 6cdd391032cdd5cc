-- End a live lease and wake waiters, in one statement. $1 key, $2 lease id,
-- $3 the store's NOTIFY channel. One row back means released.
--
-- The row is kept (lease_id NULL) for per-key state; `purge_idle` deletes it
-- later. pg_notify is transactional: waiters are told only after the commit
-- that made the key free, so their retry cannot see it still held.
--
-- It notifies only when a waiter asked (acquire.sql sets wake_fence to the
-- fence of the lease that refused it): a NOTIFY takes a database-wide lock
-- at commit, which serialises every notifying commit. wake_fence and fence
-- are not changed here, so RETURNING shows them as they were; CASE
-- evaluates pg_notify only when the condition holds.
WITH released AS (
    UPDATE {table}
    SET lease_id = NULL, expires_at = now(), updated_at = now()
    WHERE key = $1 AND lease_id = $2 AND expires_at > now()
    RETURNING key, wake_fence = fence AS wake
)
SELECT CASE WHEN wake THEN pg_notify($3, key) END FROM released
