-- End a live lease and tell waiters, in one step.
--
-- KEYS[1]  the lock's record (hash)
-- ARGV[1]  lease id
-- ARGV[2]  retention of the idle record in milliseconds
-- ARGV[3]  the store's release channel
-- ARGV[4]  the message: the lock key as the application named it
--
-- Returns 1 released, 0 not held (nothing changed, nothing published).
--
-- Written for the server's CPU like acquire.lua: four redis.call()s.

if redis.replicate_commands then redis.replicate_commands() end

local record = redis.call('HMGET', KEYS[1], 'lease_id', 'expires_at_us', 'fence', 'wake_fence')
if record[1] ~= ARGV[1] then
  return 0
end
-- The clock only for a lease id that matches: a stale release costs no TIME.
local clock = redis.call('TIME')
local expires_at = tonumber(record[2])
if not expires_at or expires_at <= clock[1] * 1000000 + clock[2] then
  return 0
end

-- Only the lease goes: 'fence' (and any field a later version adds) stays for
-- the retention time, so the next token is still last + 1 when keys are busy.
redis.call('HDEL', KEYS[1], 'lease_id', 'owner', 'expires_at_us', 'wake_fence')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
-- Publish only if a waiter was refused by this very lease (acquire.lua
-- writes `wake_fence`); every such waiter subscribed before its attempt.
if record[4] and record[4] == record[3] then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
