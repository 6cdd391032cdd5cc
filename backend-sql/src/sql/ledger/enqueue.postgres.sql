-- Queue a key unless it has a record; never change an existing one.
-- $1 key, $2 request hash. One row back: the status, and whether this
-- statement created the row (xmax = 0 marks a row version made by an insert;
-- the no-op update of an existing row sets it).
INSERT INTO {runs} AS r (key, status, attempts, max_attempts, request_hash, created_ms, updated_ms)
VALUES ($1, 'pending', 0, 1, $2, {now}, {now})
ON CONFLICT (key) DO UPDATE SET key = r.key
RETURNING status, CASE WHEN xmax = 0 THEN 1 ELSE 0 END AS created
