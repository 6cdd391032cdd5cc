-- Who holds a lock now, by the server's clock. Read only.
--
-- KEYS[1]  the lock's record (hash)
--
-- Returns {owner, fence, microseconds left}, or an empty array when free.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local record = redis.call('HMGET', KEYS[1], 'lease_id', 'owner', 'fence', 'expires_at_us')
local expires_at = tonumber(record[4])

if not record[1] or not expires_at or expires_at <= now then
  return {}
end
return {record[2] or '', tonumber(record[3]) or 0, expires_at - now}
