-- Renew a live permit for a new TTL from the server's now; keeps its fence.
--
-- KEYS[1]  the semaphore's record (see semaphore_acquire.lua)
-- ARGV[1]  permit id
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  how long the record lives at least after this renewal, in ms
--
-- Returns 1 renewed, 0 not live (nothing changed).

if redis.replicate_commands then redis.replicate_commands() end

local field = 'p:' .. ARGV[1]
local value = redis.call('HGET', KEYS[1], field)
if not value then return 0 end
local expires, rest = string.match(value, '^(%d+):(.*)$')
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
if not tonumber(expires) or tonumber(expires) <= now then return 0 end
redis.call('HSET', KEYS[1], field, string.format('%.0f', now + ARGV[2] * 1000) .. ':' .. rest)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
