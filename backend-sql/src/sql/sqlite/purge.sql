-- Delete rows whose lease ended more than ?1 milliseconds ago. The
-- BEFORE DELETE trigger (schema.sql) raises the fence high-water mark past
-- each deleted row's fence within this statement, so a purged key's next
-- token is still larger than its last.
DELETE FROM {table} WHERE expires_at < {now} - ?1
