-- Queue a key unless it has a record; never change an existing one.
-- ?1 key, ?2 request hash. No row changed means the key had a record; the
-- store then reads its status (SQLite's RETURNING cannot tell an insert from
-- a no-op update; both statements run on one connection in one transaction).
INSERT INTO {runs} (key, status, attempts, max_attempts, request_hash, created_ms, updated_ms)
VALUES (?1, 'pending', 0, 1, ?2, {now}, {now})
ON CONFLICT (key) DO NOTHING
