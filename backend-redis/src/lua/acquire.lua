-- Acquire a lock: one atomic step, judged by the server's clock.
--
-- KEYS[1]  the lock's record, a hash (see "The record" in the crate docs)
-- ARGV[1]  lease id (32 hex digits)
-- ARGV[2]  owner label
-- ARGV[3]  TTL in milliseconds
-- ARGV[4]  how long the record lives after this grant, in milliseconds
--          (TTL + idle retention, added up by the client)
-- ARGV[5]  '1' when the caller waits for a release if refused, else '0'
--
-- Returns {1, fence}                              acquired (or refreshed, same fence)
--         {0, owner, fence, microseconds left}    held by another lease
--
-- This script and release.lua are most of what a lock costs the Redis
-- server, so they are written for its CPU (counted with callgrind, see the
-- bench's "server" table): four redis.call()s, which are most of the cost,
-- and as few string <-> number conversions as possible, each a strtod or a
-- printf on the server. Numbers go to redis.call() as Lua numbers: every
-- Redis since 4.0 writes an integral one as plain digits ('%.17g', or
-- ll2string since 7.2), cheaper than a string.format('%.0f') in the script.

-- TIME before a write is only allowed with effects replication: the default
-- (and only mode) since Redis 5; on older servers ask for it explicitly.
if redis.replicate_commands then redis.replicate_commands() end

local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]

local record = redis.call('HMGET', KEYS[1], 'lease_id', 'owner', 'fence', 'expires_at_us', 'wake_fence')
local holder = record[1]
local holder_expires_at = holder and tonumber(record[4])

-- Lua numbers are doubles: integers up to 2^53 (year 2255 in microseconds)
-- are exact.
if holder_expires_at and holder_expires_at > now then
  if holder ~= ARGV[1] then
    if ARGV[5] == '1' and record[5] ~= record[3] then
      -- A waiter: ask this holder's release to publish. The release
      -- publishes only when `wake_fence` is the fence it ends, so a
      -- registration is never carried over to a later lease, and a release
      -- nobody waits for costs no PUBLISH. Written in the same step as the
      -- refusal, so a release after this reply always sees it; the waiters
      -- after the first find it written and write (and replicate) nothing.
      redis.call('HSET', KEYS[1], 'wake_fence', record[3] or '0')
    end
    return {0, record[2] or '', tonumber(record[3]) or 0, holder_expires_at - now}
  end
  -- The same lease asking again (a retry after a lost reply, or an
  -- election's proclamation): refresh it, store the request's owner label,
  -- and answer with the token it already has.
  redis.call('HSET', KEYS[1], 'expires_at_us', now + ARGV[3] * 1000, 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, tonumber(record[3]) or 0}
end

-- The token is at least the server's time in microseconds, so it keeps
-- rising even when the record (and its counter) is gone: after the idle
-- retention, or after a restart without persistence. This assumes the
-- server clock does not go backwards and that one key is not acquired more
-- than a million times a second for long.
local fence, fence_text
local last_fence = record[3] and tonumber(record[3])
if last_fence and last_fence >= now then
  fence = last_fence + 1
  fence_text = fence
else
  -- Usually the token is the clock itself: its digits are TIME's two
  -- replies, the microseconds padded to six, with no number formatted.
  fence = now
  fence_text = clock[1] .. ('00000'):sub(#clock[2]) .. clock[2]
end

redis.call('HSET', KEYS[1],
  'lease_id', ARGV[1],
  'owner', ARGV[2],
  'fence', fence_text,
  'expires_at_us', now + ARGV[3] * 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, fence}
