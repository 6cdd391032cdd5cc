-- The live holder of $1, if any.
SELECT owner, fence, ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint AS ms_left
FROM {table}
WHERE key = $1 AND lease_id IS NOT NULL AND expires_at > now()
