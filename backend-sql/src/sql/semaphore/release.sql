-- End a live permit; shared by both dialects. $1 key, $2 permit id.
-- A row back means released. The row stays (with its fence and limit);
-- expired permits go with this write. PostgreSQL wraps this statement to
-- NOTIFY waiters in the same statement (semaphore.rs).
UPDATE {sems} AS s SET
    permits = coalesce((
        SELECT {agg}({json}(e.value))
        FROM {elements} AS e
        WHERE e.value ->> 'id' <> $2 AND CAST(e.value ->> 'exp' AS bigint) > {now}
    ), {empty}),
    updated_ms = {now}
WHERE key = $1 AND {mine}
RETURNING key
