-- Extend a live run's lease: $1 key, $2 lease id, $3 TTL ms. One row changed
-- means renewed; an expired, finished or foreign run changes nothing.
UPDATE {runs}
SET expires_ms = {now} + $3 + 1
WHERE key = $1 AND lease_id = $2 AND status = 'running' AND expires_ms > {now}
