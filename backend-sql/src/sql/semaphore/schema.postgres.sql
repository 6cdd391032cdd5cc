-- Semaphores on PostgreSQL, beside the lock table; run by `ensure_schema()`
-- in the same transaction. One row per semaphore key: its limit, the last
-- fence granted, and its permits as a JSON array (see acquire.sql). Fences
-- come from the lock table's sequence.
CREATE TABLE IF NOT EXISTS {sems} (
    key        text COLLATE "C" PRIMARY KEY,
    lim        bigint NOT NULL,
    fence      bigint NOT NULL,
    permits    jsonb  NOT NULL,
    updated_ms bigint NOT NULL
);
