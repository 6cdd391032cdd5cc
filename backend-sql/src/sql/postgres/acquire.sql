-- Take a key if it is free, expired or already ours; else report its holder.
-- $1 key, $2 lease id, $3 owner label, $4 TTL in milliseconds, $5 whether
-- the caller waits for a release if refused (it LISTENs already).
--
-- One statement, one round trip, one row back: `acquired` true with our
-- fence, or false with the holder that refused us. Each step below runs
-- only when the ones before it found nothing (NOT EXISTS on their output,
-- which also makes each run after them), cheapest first:
--
-- `seen`, the fast refusal: the statement's snapshot shows a live lease
-- that is not ours, and either the caller will not wait or a waiter already
-- asked that lease's release to notify (wake_fence = fence). The answer is
-- "held" as of the snapshot, a moment inside this statement, and nothing is
-- locked or written (review m7): pollers and waiters of one key read side
-- by side instead of queueing for its row lock, and none of them delays the
-- holder's release. A release after the snapshot notifies, since it finds
-- wake_fence = fence (only a refusal writes wake_fence, and a takeover
-- keeps the old value, which is below the new fence), and the waiter
-- subscribed before it sent this statement.
--
-- `taken`, the usual acquire: a plain UPDATE of a row that is free, expired
-- or ours. It costs one WAL record where the upsert costs two (ON CONFLICT
-- first writes a tuple lock). If the row changed after the snapshot,
-- READ COMMITTED re-checks the WHERE and recomputes the SET list on the
-- newest version, under its lock; if that version is taken, it skips.
--
-- `attempt`, the upsert: a brand-new key, a waiter that must register, or
-- a row that changed under `taken`. `DO UPDATE ... WHERE` is false for a
-- foreign live lease, so such a row is only locked (ON CONFLICT locks the
-- conflicting row whatever its WHERE says) and judged on its newest
-- version, not rewritten, with one exception: the first refused *waiter*
-- of a lease records `wake_fence`. release.sql notifies only when
-- wake_fence is the fence it ends, so a registration never carries over to
-- a later lease (whose fence is larger), and a release nobody waits for
-- takes no notify-queue lock. It is written under the row lock in the same
-- statement as the refusal, so the release, which needs that row lock too,
-- sees it; later waiters of the same lease find it in their snapshot and
-- take `seen`.
--
-- `refusal`: RETURNING gives nothing when the upsert's WHERE is false, so
-- this reads the holder. A plain read would see the statement's snapshot,
-- taken before we got the row lock: possibly an older holder, who released
-- while we waited. `FOR SHARE` makes READ COMMITTED follow the row to its
-- latest version — the one the upsert locked and judged, which nobody can
-- change before we commit, since we hold its lock — and return that.
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
-- Fences: a takeover's is GREATEST(nextval(), the row's fence + 1), computed
-- on the row version it replaces, which it holds locked: so it is larger
-- than the fence of every earlier holder of the row, in whatever order
-- concurrent statements drew from the sequence, and even if the sequence
-- went back (ALTER SEQUENCE ... RESTART, a logical-replication move that
-- re-created it at 1, a session CACHE). The sequence alone gives a
-- brand-new row its fence (the INSERT's select list, which runs only when
-- its WHERE holds). A retried acquire of our own live lease keeps its fence
-- and refreshes its expiry. CASE evaluates only the branch it takes, so a
-- refused waiter's registration draws no fence.
WITH seen AS (
    SELECT fence, owner, expires_at
    FROM {table}
    WHERE key = $1 AND lease_id <> $2 AND expires_at > now()
      AND (NOT $5 OR wake_fence = fence)
),
taken AS (
    -- fence and acquired_at: the same rule as in the upsert's DO UPDATE
    -- below (SQL cannot share it); change both together.
    UPDATE {table} AS held SET
        fence = CASE
            WHEN held.lease_id IS NOT NULL AND held.expires_at > now() THEN held.fence
            ELSE GREATEST(nextval('{fence_seq}'), held.fence + 1)
        END,
        acquired_at = CASE
            WHEN held.lease_id IS NOT NULL AND held.expires_at > now() THEN held.acquired_at
            ELSE now()
        END,
        lease_id = $2,
        owner = $3,
        expires_at = now() + $4::bigint * interval '1 millisecond',
        updated_at = now()
    WHERE key = $1 AND (lease_id IS NULL OR expires_at <= now() OR lease_id = $2)
      AND NOT EXISTS (SELECT FROM seen)
    RETURNING true AS acquired, held.fence, held.owner, held.expires_at
),
attempt AS (
    INSERT INTO {table} AS held (key, lease_id, owner, fence, acquired_at, expires_at, updated_at)
    SELECT $1, $2, $3, nextval('{fence_seq}'), now(), now() + $4::bigint * interval '1 millisecond', now()
    WHERE NOT EXISTS (SELECT FROM seen) AND NOT EXISTS (SELECT FROM taken)
    ON CONFLICT (key) DO UPDATE SET
        -- fence and acquired_at: as in `taken` above.
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
    WHERE key = $1 AND NOT EXISTS (SELECT FROM attempt) AND NOT EXISTS (SELECT FROM seen)
      AND NOT EXISTS (SELECT FROM taken)
    FOR SHARE
)
SELECT acquired, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint AS ms_left
FROM taken
UNION ALL
SELECT acquired, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint
FROM attempt
UNION ALL
SELECT false, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint
FROM refusal
UNION ALL
SELECT false, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint
FROM seen
