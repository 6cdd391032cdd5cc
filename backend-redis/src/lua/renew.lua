-- Extend a live lease, keeping its fencing token.
--
-- KEYS[1]  the lock's record (hash)
-- ARGV[1]  lease id
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  retention of the idle record in milliseconds
--
-- Returns 1 renewed, 0 lost (expired, taken over, released, never existed).

if redis.replicate_commands then redis.replicate_commands() end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local record = redis.call('HMGET', KEYS[1], 'lease_id', 'expires_at_us')
local expires_at = tonumber(record[2])

if record[1] ~= ARGV[1] or not expires_at or expires_at <= now then
  return 0
end

local ttl_ms = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires_at_us', string.format('%.0f', now + ttl_ms * 1000))
redis.call('PEXPIRE', KEYS[1], ttl_ms + tonumber(ARGV[3]))
return 1
