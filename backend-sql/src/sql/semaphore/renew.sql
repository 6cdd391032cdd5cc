-- Renew a live permit for a new TTL from the database's now, keeping its
-- fence; shared by both dialects. $1 key, $2 permit id, $3 TTL ms.
-- A row back means renewed; none, that the permit is not live. On
-- PostgreSQL the WHERE is checked again on the row's newest version under
-- its lock, so a concurrent release or takeover is seen.
UPDATE {sems} AS s SET
    permits = (
        SELECT {agg}({json}(CASE WHEN e.value ->> 'id' = $2
            THEN {object}('id', $2, 'owner', e.value ->> 'owner',
                          'fence', CAST(e.value ->> 'fence' AS bigint), 'exp', {now} + $3 + 1)
            ELSE e.value END))
        FROM {elements} AS e
        WHERE CAST(e.value ->> 'exp' AS bigint) > {now}
    ),
    updated_ms = {now}
WHERE key = $1 AND {mine}
RETURNING key
