-- Take a key if it is free, expired or already ours; else report its holder.
-- ?1 key, ?2 lease id, ?3 owner label, ?4 TTL in milliseconds.
--
-- Always one row back, the row as this statement left it: a foreign live
-- holder is "updated" to itself (PostgreSQL's statement only locks it and
-- reads it; here the rewrite is cheap, writers taking turns on one file).
-- {now} reads the host clock once per statement: SQLite returns the same
-- 'now' for every call within one sqlite3_step(). Writers are serialised by
-- the database file's write lock, so no other statement interleaves.
--
-- Fences: a live row keeps its fence; a takeover gets one more than the
-- larger of the row's fence and the fence counter; a new row gets one more
-- than the counter, which triggers (schema.sql) raise to every fence issued
-- (here or to a run of the ledger) and every fence deleted. So a fence is
-- larger than every earlier one of the file: a key's never repeats or goes
-- back, and a lock's is above its key's earlier runs.
INSERT INTO {table} AS held (key, lease_id, owner, fence, acquired_at, expires_at, updated_at)
VALUES (?1, ?2, ?3, (SELECT high + 1 FROM {fence_table} WHERE id = 0), {now}, {now} + ?4, {now})
ON CONFLICT (key) DO UPDATE SET
    fence = CASE
        WHEN held.lease_id IS NOT NULL AND held.expires_at > {now} THEN held.fence
        ELSE max(held.fence, (SELECT high FROM {fence_table} WHERE id = 0)) + 1
    END,
    acquired_at = CASE
        WHEN held.lease_id IS NOT NULL AND held.expires_at > {now} THEN held.acquired_at
        ELSE {now}
    END,
    lease_id = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= {now} OR held.lease_id = ?2 THEN ?2
        ELSE held.lease_id
    END,
    owner = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= {now} OR held.lease_id = ?2 THEN ?3
        ELSE held.owner
    END,
    expires_at = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= {now} OR held.lease_id = ?2 THEN excluded.expires_at
        ELSE held.expires_at
    END,
    updated_at = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= {now} OR held.lease_id = ?2 THEN {now}
        ELSE held.updated_at
    END
RETURNING
    lease_id = ?2 AS acquired,
    fence,
    owner,
    expires_at - {now} AS ms_left
