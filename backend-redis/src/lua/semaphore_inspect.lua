-- The live permits of a semaphore, read-only.
--
-- KEYS[1]  the semaphore's record (see semaphore_acquire.lua)
--
-- Returns {} when no permit is live, else {limit, owner, fence, µs left, ...}.

local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local all = redis.call('HGETALL', KEYS[1])
local limit = 0
local reply = {}
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == 'limit' then
    limit = tonumber(value)
  elseif string.sub(field, 1, 2) == 'p:' then
    local expires, fence, owner = string.match(value, '^(%d+):(%d+):(.*)$')
    expires = tonumber(expires)
    if expires and expires > now then
      reply[#reply + 1] = owner
      reply[#reply + 1] = tonumber(fence)
      reply[#reply + 1] = expires - now
    end
  end
end
if #reply == 0 then return {} end
table.insert(reply, 1, limit)
return reply
