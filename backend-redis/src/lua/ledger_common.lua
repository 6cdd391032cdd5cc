-- Shared head of every ledger script (prepended by src/ledger.rs).
--
-- KEYS[1..5]  the per-status sorted sets (pending, running, succeeded,
--             failed, ignored): member = lock key, score = updated_at in ms
-- KEYS[6]     the namespace's fence high-water (raised by purge)
-- KEYS[7]     the record, a hash (absent for query and purge)
-- All share the namespace hash tag, so they live in one cluster slot.

-- TIME before a write needs effects replication (default since Redis 5).
if redis.replicate_commands then redis.replicate_commands() end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now / 1000)
local IDX = {pending = KEYS[1], running = KEYS[2], succeeded = KEYS[3],
             failed = KEYS[4], ignored = KEYS[5]}
local HW = KEYS[6]
local REC = KEYS[7]

local function int(n) return string.format('%.0f', n) end

-- Moves `member` between the status sets in the same script as the
-- transition, so the sets never drift from the records. A record created
-- anew (`old` nil) may be the successor of one that expired by the
-- ledger retention (PEXPIRE) and left its finished-set entry behind:
-- drop that entry, or the key would be listed twice.
local function set_status(member, old, new)
  if old and old ~= new then redis.call('ZREM', IDX[old], member) end
  if not old then
    redis.call('ZREM', IDX.succeeded, member)
    redis.call('ZREM', IDX.ignored, member)
  end
  redis.call('ZADD', IDX[new], now_ms, member)
end

-- A record leaving `succeeded`/`ignored` must not keep the expiry the
-- ledger retention gave it.
local function keep_record()
  redis.call('PERSIST', REC)
end
