-- An operator's retry: a failed, ignored or stuck (running, lease expired)
-- record goes back to pending. ?1 key. One row changed means requeued; else
-- the store reads the status in the same transaction.
UPDATE {runs}
SET status = 'pending', lease_id = NULL, expires_ms = NULL, updated_ms = {now}
WHERE key = ?1
  AND (status IN ('failed', 'ignored') OR (status = 'running' AND expires_ms <= {now}))
