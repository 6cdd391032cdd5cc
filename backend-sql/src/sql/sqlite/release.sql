-- End a live lease. ?1 key, ?2 lease id. One row changed means released.
-- The row is kept (lease_id NULL); `purge_idle` deletes it later.
UPDATE {table}
SET lease_id = NULL, expires_at = {now}, updated_at = {now}
WHERE key = ?1 AND lease_id = ?2 AND expires_at > {now}
