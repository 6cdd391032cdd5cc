-- Extend a live lease, keeping its fencing token.
--
-- KEYS[1]  the lock's record (hash)
-- ARGV[1]  lease id
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  retention of the idle record in milliseconds
--
-- Returns 1 renewed, 0 lost (expired, taken over, released, never existed).
--
-- Numbers go to redis.call() as Lua numbers, as in acquire.lua.

if redis.replicate_commands then redis.replicate_commands() end

local record = redis.call('HMGET', KEYS[1], 'lease_id', 'expires_at_us')
if record[1] ~= ARGV[1] then
  return 0
end
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local expires_at = tonumber(record[2])
if not expires_at or expires_at <= now then
  return 0
end

redis.call('HSET', KEYS[1], 'expires_at_us', now + ARGV[2] * 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[2] + ARGV[3])
return 1
