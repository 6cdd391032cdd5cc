-- Take a key if it is free, expired or already ours; else report its holder.
-- $1 key, $2 lease id, $3 owner label, $4 TTL in milliseconds, $5 whether
-- the caller waits for a release if refused (it LISTENs already).
--
-- One statement, one round trip, one row back: `acquired` true with our
-- fence, or false with the holder that refused us.
--
-- A refused poll writes no row version (review m7), with one exception: the
-- first refused *waiter* of a lease records `wake_fence` (below). The
-- upsert's `DO UPDATE ... WHERE` is false for a foreign live lease, so the
-- row is only locked (ON CONFLICT locks the conflicting row whatever its
-- WHERE says), not rewritten. That lock is what a refusal still costs: a
-- lock-only xmax on the tuple, and waiting behind the holder's renew or
-- release of the same row. No new tuple, no index entries, no bloat.
--
-- `wake_fence`: a refused waiter asks the holder's release to NOTIFY.
-- release.sql notifies only when wake_fence is the fence it ends, so a
-- registration never carries over to a later lease (whose fence is larger),
-- and a release nobody waits for takes no notify-queue lock. It is written
-- under the row lock in the same statement as the refusal, so the release,
-- which needs that row lock too, sees it; later waiters of the same lease
-- find it written and write nothing.
--
-- RETURNING gives nothing when the WHERE is false, so `refusal` reads the
-- holder in the same statement. A plain read would see the statement's
-- snapshot, taken before we got the row lock: possibly an older holder, who
-- released while we waited. `FOR SHARE` makes READ COMMITTED follow the row
-- to its latest version — the one our upsert locked and judged, which
-- nobody can change before we commit, since we hold its lock — and return
-- that. `attempt` runs first: it is the first branch of the UNION ALL (and
-- a data-modifying WITH runs to completion before the statement ends).
--
-- One case returns no row: the key's row was inserted by a transaction that
-- committed after our snapshot (two clients creating one brand-new key at
-- once), or deleted and inserted again (a purge) since. The upsert saw it and
-- refused; the snapshot read cannot. The caller then runs the statement again
-- (lock.rs), with a snapshot that has the row.
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
-- for a brand-new row. A retried acquire of our own live lease keeps its
-- fence and refreshes its expiry. CASE evaluates only the branch it takes,
-- so a refused waiter's registration draws no fence.
WITH attempt AS (
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
        wake_fence = CASE
            WHEN held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2 THEN held.wake_fence
            ELSE held.fence
        END
    WHERE held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2
       OR ($5 AND held.wake_fence IS DISTINCT FROM held.fence)
    RETURNING held.lease_id = $2 AS acquired, held.fence, held.owner, held.expires_at
),
refusal AS (
    SELECT fence, owner, expires_at
    FROM {table}
    WHERE key = $1 AND NOT EXISTS (SELECT FROM attempt)
    FOR SHARE
)
SELECT acquired, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint AS ms_left
FROM attempt
UNION ALL
SELECT false, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint
FROM refusal
