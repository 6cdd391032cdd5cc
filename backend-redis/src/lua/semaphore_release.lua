-- End a live permit and tell waiters, in one step.
--
-- KEYS[1]  the semaphore's record (see semaphore_acquire.lua)
-- ARGV[1]  permit id
-- ARGV[2]  the store's release channel
-- ARGV[3]  the message waiters of this semaphore listen for
--
-- Returns 1 released, 0 not live (nothing published).

if redis.replicate_commands then redis.replicate_commands() end

local field = 'p:' .. ARGV[1]
local record = redis.call('HMGET', KEYS[1], field, 'wake')
if not record[1] then return 0 end
-- Gone either way; 'limit' and 'fence' stay for the record's retention.
redis.call('HDEL', KEYS[1], field)
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local expires = tonumber(string.match(record[1], '^(%d+):'))
if not expires or expires <= now then return 0 end
-- Publish only if a waiter was refused since the last publish; every such
-- waiter subscribed before its attempt.
if record[2] == '1' then
  redis.call('HDEL', KEYS[1], 'wake')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
