-- Take a key if it is free, expired or already ours; else report its holder.
-- $1 key, $2 lease id, $3 owner label, $4 TTL in milliseconds, $5 whether
-- the caller waits for a release if refused (it LISTENs already).
--
-- Always exactly one row back, from one statement: the row as this statement
-- left it. A foreign live holder is "updated" to itself, on purpose: unlike a
-- `DO UPDATE ... WHERE` plus a second SELECT (which reads the pre-statement
-- snapshot, i.e. possibly an older holder or no row at all when the blocking
-- holder committed while we waited for its row lock), RETURNING reports the
-- latest committed version, the one that actually refused us.
--
-- now() is the start of this statement's transaction, which is this statement:
-- one consistent instant for every comparison below. If we waited on a row
-- lock, now() is earlier than the moment we decide, which only makes us judge
-- leases *less* expired and grant a deadline that is earlier, never later,
-- than the holder's own `sent + TTL`: both errors are on the safe side.
--
-- The fence of a takeover is drawn by nextval() in the SET list, i.e. after
-- the row lock is held, so it is larger than the fence of every earlier
-- holder of this row — as long as the sequence never went back. GREATEST
-- with the row's own fence + 1 keeps the fence rising even if it did
-- (ALTER SEQUENCE ... RESTART, a logical-replication move that re-created
-- it at 1, a session CACHE), at no cost. The VALUES nextval() only lands
-- for a brand-new row.
INSERT INTO {table} AS held (key, lease_id, owner, fence, acquired_at, expires_at, updated_at)
VALUES ($1, $2, $3, nextval('{fence_seq}'), now(), now() + $4::bigint * interval '1 millisecond', now())
ON CONFLICT (key) DO UPDATE SET
    fence = CASE
        WHEN held.lease_id IS NOT NULL AND held.expires_at > now() THEN held.fence
        ELSE GREATEST(nextval('{fence_seq}'), held.fence + 1)
    END,
    acquired_at = CASE
        WHEN held.lease_id IS NOT NULL AND held.expires_at > now() THEN held.acquired_at
        ELSE now()
    END,
    lease_id = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2 THEN $2
        ELSE held.lease_id
    END,
    owner = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2 THEN $3
        ELSE held.owner
    END,
    expires_at = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2 THEN excluded.expires_at
        ELSE held.expires_at
    END,
    updated_at = CASE
        WHEN held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2 THEN now()
        ELSE held.updated_at
    END,
    -- A refused waiter asks the holder's release to NOTIFY: release.sql
    -- notifies only when wake_fence is the fence it ends, so a registration
    -- never carries over to a later lease (whose fence is larger), and a
    -- release nobody waits for takes no notify-queue lock. Written under the
    -- row lock in the same statement as the refusal, so the release, which
    -- needs that row lock too, sees it.
    wake_fence = CASE
        WHEN $5 AND held.lease_id IS NOT NULL AND held.expires_at > now() AND held.lease_id <> $2 THEN held.fence
        ELSE held.wake_fence
    END
RETURNING
    held.lease_id = $2 AS acquired,
    held.fence,
    held.owner,
    ceil(extract(epoch FROM held.expires_at - now()) * 1000)::bigint AS ms_left
