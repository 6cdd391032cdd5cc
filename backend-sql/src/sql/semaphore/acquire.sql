-- Take a semaphore permit, or report the key's permits: one statement,
-- shared by PostgreSQL and SQLite. The dialect fills in NOW (the database
-- clock in integer ms), the JSON functions (ELEMENTS, AGG, OBJECT, ARRAY,
-- JSON, EMPTY), the fence expressions and the placeholder style. JSON() is
-- around every value aggregated: SQLite drops the JSON subtype of a value
-- passed through a subquery, and would store it as a quoted string.
-- $1 key, $2 permit id, $3 owner, $4 TTL ms, $5 the caller's limit.
--
-- A key is one row whose `permits` is a JSON array of its permits
-- ({id, owner, fence, exp}). All of a key's permits on one row is what makes
-- one statement enough: PostgreSQL's ON CONFLICT locks that row and computes
-- every SET expression on its newest version, and SQLite serialises writers
-- of the file, so "count the live permits, then add one" cannot interleave
-- with another acquire. (A row per permit would need the count to see rows
-- committed after the statement's snapshot, which one PostgreSQL statement
-- cannot.) The limit bounds the array at 1024 entries.
--
-- Expired permits are dropped by this very write (no sweeper). LIVE_COUNT,
-- MINE and MISMATCH read the row as it was before the statement, as every
-- SET expression does, so they agree with each other:
--   MISMATCH: live permits hold under another limit — nothing changes
--             (the client reads the stored limit back and says so);
--   MINE:     the caller's own permit is live (a retry after a lost reply)
--             — its expiry is refreshed, its fence kept;
--   GRANT:    otherwise, fewer than $5 live permits — a new one is added
--             with a fence above the key's last and the counter's.
-- The caller reads the outcome from the returned row: its permit in the
-- array means granted.
INSERT INTO {sems} AS s (key, lim, fence, permits, updated_ms)
SELECT $1, $5, n.f, {array}({object}('id', $2, 'owner', $3, 'fence', n.f, 'exp', {now} + $4 + 1)), {now}
FROM (SELECT {new_fence} AS f) AS n
WHERE true -- SQLite needs a WHERE before ON CONFLICT after a SELECT
ON CONFLICT (key) DO UPDATE SET
    lim = CASE WHEN {grant} THEN $5 ELSE s.lim END,
    fence = CASE WHEN {grant} THEN {grant_fence} ELSE s.fence END,
    permits = coalesce((
        SELECT {agg}({json}(u.v)) FROM (
            SELECT CASE WHEN e.value ->> 'id' = $2 AND NOT {mismatch}
                THEN {object}('id', $2, 'owner', e.value ->> 'owner',
                              'fence', CAST(e.value ->> 'fence' AS bigint), 'exp', {now} + $4 + 1)
                ELSE {json}(e.value) END AS v
            FROM {elements} AS e
            WHERE CAST(e.value ->> 'exp' AS bigint) > {now}
            UNION ALL
            SELECT {object}('id', $2, 'owner', $3,
                            'fence', {grant_fence}, 'exp', {now} + $4 + 1) AS v
            WHERE {grant}
        ) AS u
    ), {empty}),
    updated_ms = {now}
RETURNING lim, {permits_text} AS permits, {now} AS now_ms
