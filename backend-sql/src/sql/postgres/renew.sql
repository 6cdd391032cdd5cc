-- Extend a live lease. $1 key, $2 lease id, $3 TTL in milliseconds.
-- No row changed means the lease is lost (expired, taken over or released).
UPDATE {table}
SET expires_at = now() + $3::bigint * interval '1 millisecond',
    updated_at = now()
WHERE key = $1 AND lease_id = $2 AND expires_at > now()
