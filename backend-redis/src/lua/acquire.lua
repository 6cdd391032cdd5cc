-- Acquire a lock: one atomic step, judged by the server's clock.
--
-- KEYS[1]  the lock's record, a hash (see record.md in the crate docs)
-- ARGV[1]  lease id (32 hex digits)
-- ARGV[2]  owner label
-- ARGV[3]  TTL in milliseconds
-- ARGV[4]  retention of the idle record in milliseconds
--
-- Returns {1, fence}                              acquired (or refreshed, same fence)
--         {0, owner, fence, microseconds left}    held by another lease

-- TIME before a write is only allowed with effects replication: the default
-- (and only mode) since Redis 5; on older servers ask for it explicitly.
if redis.replicate_commands then redis.replicate_commands() end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local ttl_ms = tonumber(ARGV[3])
local expires_at = now + ttl_ms * 1000

local record = redis.call('HMGET', KEYS[1], 'lease_id', 'owner', 'fence', 'expires_at_us')
local holder = record[1]
local last_fence = tonumber(record[3])
local holder_expires_at = tonumber(record[4])

-- Lua numbers are doubles: integers up to 2^53 (year 2255 in microseconds)
-- are exact, and '%.0f' writes them without an exponent.
local function int(n) return string.format('%.0f', n) end

if holder and holder_expires_at and holder_expires_at > now then
  if holder ~= ARGV[1] then
    return {0, record[2] or '', last_fence or 0, holder_expires_at - now}
  end
  -- The same lease asking again (a retry after a lost reply): refresh it and
  -- answer with the token it already has.
  redis.call('HSET', KEYS[1], 'expires_at_us', int(expires_at))
  redis.call('PEXPIRE', KEYS[1], ttl_ms + tonumber(ARGV[4]))
  return {1, last_fence or 0}
end

-- The token is at least the server's time in microseconds, so it keeps
-- rising even when the record (and its counter) is gone: after the idle
-- retention, or after a restart without persistence. This assumes the
-- server clock does not go backwards and that one key is not acquired more
-- than a million times a second for long.
local fence = now
if last_fence and last_fence + 1 > fence then fence = last_fence + 1 end

redis.call('HSET', KEYS[1],
  'lease_id', ARGV[1],
  'owner', ARGV[2],
  'fence', int(fence),
  'expires_at_us', int(expires_at))
redis.call('PEXPIRE', KEYS[1], ttl_ms + tonumber(ARGV[4]))
return {1, fence}
