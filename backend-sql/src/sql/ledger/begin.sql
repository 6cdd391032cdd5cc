-- Start a run of a key, or report its record: the ledger's `begin`, one
-- statement. Shared by PostgreSQL and SQLite: the dialect fills in NOW
-- (the server's clock in integer ms), the new-fence expression and the takeover-fence expression, and
-- SQLite's placeholders are numbered with a question mark instead of a dollar sign.
-- $1 key, $2 lease id, $3 owner, $4 TTL ms, $5 max attempts, $6 request hash.
--
-- START is the contract's "may start" (absent rows start through VALUES):
--   the hashes agree (either is NULL, or equal), and the record is pending,
--   failed with attempts left, or running with an expired lease and attempts
--   left (a takeover of a crashed run).
-- SAME is a retry of this very request (its reply was lost): the lease is
-- refreshed, fence and attempt unchanged. It is checked first (START
-- includes NOT SAME), as on the other backends: a retry that arrives after
-- its own lease expired, with nobody having taken over, is still the same
-- run, not a takeover by itself with a new fence and one more attempt.
-- Anything else updates the row to itself, as the lock's acquire does, so
-- RETURNING reports the latest committed record in the same reply.
--
-- TOOK_OVER: RETURNING sees the row as this statement left it, in both
-- dialects, so whether the start replaced a running run (a takeover: START
-- admits a running row only once its lease expired, and never our own
-- lease id) is written to the row's `took_over` column from the old row and
-- read back from there. Every begin writes it (0 when it did not start a
-- run over a running one, so SAME answers 0), and only begin reads it.
--
-- SET expressions all read the row as it was before this statement, so the
-- CASE conditions agree with each other. The lease ends 1 ms after
-- `now + TTL`: NOW is floored to the millisecond, and the holder counts
-- its TTL from before it sent the request, so the server must never end the
-- lease earlier than that.
INSERT INTO {runs} AS r
    (key, status, attempts, max_attempts, fence, owner, lease_id, expires_ms,
     request_hash, created_ms, updated_ms, took_over)
VALUES ($1, 'running', 1, $5, {new_fence}, $3, $2, {now} + $4 + 1, $6, {now}, {now}, 0)
ON CONFLICT (key) DO UPDATE SET
    fence        = CASE WHEN {start} THEN {takeover_fence} ELSE r.fence END,
    attempts     = CASE WHEN {start} THEN r.attempts + 1 ELSE r.attempts END,
    max_attempts = CASE WHEN {start} THEN $5 ELSE r.max_attempts END,
    owner        = CASE WHEN {start} THEN $3 ELSE r.owner END,
    lease_id     = CASE WHEN {start} THEN $2 ELSE r.lease_id END,
    expires_ms   = CASE WHEN {start} OR {same} THEN {now} + $4 + 1 ELSE r.expires_ms END,
    request_hash = CASE WHEN {start} THEN coalesce(r.request_hash, $6) ELSE r.request_hash END,
    updated_ms   = CASE WHEN {start} THEN {now} ELSE r.updated_ms END,
    status       = CASE WHEN {start} THEN 'running' ELSE r.status END,
    took_over    = CASE WHEN {start} AND r.status = 'running' THEN 1 ELSE 0 END
RETURNING {columns},
    CASE WHEN status = 'running' AND lease_id = $2 THEN 1 ELSE 0 END AS started,
    took_over
