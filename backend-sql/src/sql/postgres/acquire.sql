-- Take a key if it is free, expired or already ours; else report its holder.
-- $1 key, $2 lease id, $3 owner label, $4 TTL in milliseconds.
--
-- One statement, one round trip, one row back: `acquired` true with our
-- fence, or false with the holder that refused us.
--
-- A refused poll writes no row version: the upsert's `DO UPDATE ... WHERE`
-- is false for a foreign live lease, so the row is only locked (ON CONFLICT
-- locks the conflicting row whatever its WHERE says), not rewritten. That
-- lock is what a refusal still costs: a lock-only xmax on the tuple (a small
-- WAL record, a transaction id), and waiting behind the holder's renew or
-- release of the same row, as before. No new tuple, no index entries, no
-- bloat; xmin and ctid of the row stay as they were.
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
-- fence and refreshes its expiry.
WITH attempt AS (
    INSERT INTO {table} AS held (key, lease_id, owner, fence, acquired_at, expires_at, updated_at)
    VALUES ($1, $2, $3, nextval('{fence_seq}'), now(), now() + $4::bigint * interval '1 millisecond', now())
    ON CONFLICT (key) DO UPDATE SET
        fence = CASE
            WHEN held.lease_id = $2 AND held.expires_at > now() THEN held.fence
            ELSE GREATEST(nextval('{fence_seq}'), held.fence + 1)
        END,
        acquired_at = CASE
            WHEN held.lease_id = $2 AND held.expires_at > now() THEN held.acquired_at
            ELSE now()
        END,
        lease_id = $2,
        owner = $3,
        expires_at = excluded.expires_at,
        updated_at = now()
    WHERE held.lease_id IS NULL OR held.expires_at <= now() OR held.lease_id = $2
    RETURNING held.fence, held.owner, held.expires_at
),
refusal AS (
    SELECT fence, owner, expires_at
    FROM {table}
    WHERE key = $1 AND NOT EXISTS (SELECT FROM attempt)
    FOR SHARE
)
SELECT true AS acquired, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint AS ms_left
FROM attempt
UNION ALL
SELECT false, fence, owner,
       ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint
FROM refusal
