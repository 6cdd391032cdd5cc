-- Delete rows whose lease ended more than $1 milliseconds ago. Fences come
-- from the sequence, which deletion cannot move back.
DELETE FROM {table}
WHERE expires_at < now() - $1::bigint * interval '1 millisecond'
