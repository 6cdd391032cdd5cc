-- Who holds a lock now, by the server's clock. Read only.
--
-- KEYS[1]  the lock's record (hash)
--
-- Returns {owner, fence, microseconds left}, or an empty array when free.

local record = redis.call('HMGET', KEYS[1], 'lease_id', 'owner', 'fence', 'expires_at_us')
local expires_at = record[1] and tonumber(record[4])
if not expires_at then
  return {}
end
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
if expires_at <= now then
  return {}
end
return {record[2] or '', tonumber(record[3]) or 0, expires_at - now}
