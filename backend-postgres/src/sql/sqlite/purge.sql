-- Second half of `purge_idle`: delete rows whose lease ended more than ?1
-- milliseconds ago (runs after purge_mark.sql, in the same transaction).
DELETE FROM {table} WHERE expires_at < {now} - ?1
