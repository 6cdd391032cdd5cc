-- An operator's retry: a failed, ignored or stuck (running, lease expired)
-- record goes back to pending. $1 key. One row back unless the key has no
-- record: its status before this statement (the outer SELECT reads the
-- statement's snapshot) and whether it was requeued.
WITH requeued AS (
    UPDATE {runs}
    SET status = 'pending', lease_id = NULL, expires_ms = NULL, updated_ms = {now}
    WHERE key = $1
      AND (status IN ('failed', 'ignored') OR (status = 'running' AND expires_ms <= {now}))
    RETURNING key
)
SELECT r.status, CASE WHEN EXISTS (SELECT 1 FROM requeued) THEN 1 ELSE 0 END AS requeued
FROM {runs} r WHERE r.key = $1
