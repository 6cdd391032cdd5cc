-- End a run: the ledger's succeed / fail, one statement, conditioned on the
-- run's lease id, so a stale finisher (whose run was taken over) matches no
-- row and changes nothing. The lease may have expired: as long as nobody
-- took over, the record is still this run's.
-- $1 key, $2 lease id, $3 1 = succeeded, $4 1 = retryable failure,
-- $5 result (succeeded), $6 error-history slot (attempt % 5, or -1),
-- $7 the error as JSON.
--
-- A failure becomes `failed` while attempts are left, else `ignored`; its
-- error goes to one slot of the five-slot ring, so no statement ever reads
-- the history first. On PostgreSQL a trigger announces the end (NOTIFY) in
-- the same transaction.
UPDATE {runs} SET
    status = CASE
        WHEN $3 = 1 THEN 'succeeded'
        WHEN $4 = 1 AND attempts < max_attempts THEN 'failed'
        ELSE 'ignored'
    END,
    result = CASE WHEN $3 = 1 THEN $5 ELSE result END,
    err0 = CASE WHEN $6 = 0 THEN $7 ELSE err0 END,
    err1 = CASE WHEN $6 = 1 THEN $7 ELSE err1 END,
    err2 = CASE WHEN $6 = 2 THEN $7 ELSE err2 END,
    err3 = CASE WHEN $6 = 3 THEN $7 ELSE err3 END,
    err4 = CASE WHEN $6 = 4 THEN $7 ELSE err4 END,
    lease_id = NULL,
    expires_ms = NULL,
    updated_ms = {now},
    finished_ms = {now}
WHERE key = $1 AND lease_id = $2 AND status = 'running'
RETURNING status
