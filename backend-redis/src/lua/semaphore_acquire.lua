-- Take a semaphore permit: one atomic step, judged by the server's clock.
--
-- KEYS[1]  the semaphore's record, a hash: 'limit', 'fence' (the last
--          fence granted), 'wake' ('1' when a refused waiter asked the next
--          release to publish), and one field 'p:<permit id>' per permit
--          whose value is '<expires at, µs>:<fence>:<owner>'
-- ARGV[1]  permit id (32 hex digits)
-- ARGV[2]  owner label
-- ARGV[3]  the key's limit, as the caller knows it
-- ARGV[4]  TTL in milliseconds
-- ARGV[5]  how long the record lives at least after this grant, in ms
--          (TTL + idle retention, added up by the client)
-- ARGV[6]  '1' when the caller waits for a release if refused, else '0'
--
-- Returns {1, fence}                                    granted (or refreshed, same fence)
--         {0, limit, owner, fence, µs left, ...}        refused: every live permit
--         {2, stored limit}                             live permits hold under another limit

if redis.replicate_commands then redis.replicate_commands() end

local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]

local all = redis.call('HGETALL', KEYS[1])
local limit, last_fence, mine = nil, nil, nil
local live, dead = {}, {}
local own_field = 'p:' .. ARGV[1]
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == 'limit' then
    limit = tonumber(value)
  elseif field == 'fence' then
    last_fence = tonumber(value)
  elseif string.sub(field, 1, 2) == 'p:' then
    local expires, fence, owner = string.match(value, '^(%d+):(%d+):(.*)$')
    expires = tonumber(expires)
    if expires and expires > now then
      if field == own_field then mine = fence end
      live[#live + 1] = {expires, fence, owner}
    else
      -- An expired permit counts no more: drop it in this same step, so no
      -- sweeper is needed.
      dead[#dead + 1] = field
    end
  end
end
if #dead > 0 then redis.call('HDEL', KEYS[1], unpack(dead)) end

local function keep()
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
end

local requested = tonumber(ARGV[3])
if #live > 0 and limit ~= requested then
  return {2, limit or 0}
end

local expires_at = string.format('%.0f', now + ARGV[4] * 1000)
if mine then
  -- The same permit asking again (a retry after a lost reply): refresh it
  -- and answer with the token it already has.
  redis.call('HSET', KEYS[1], own_field, expires_at .. ':' .. mine .. ':' .. ARGV[2])
  keep()
  return {1, tonumber(mine)}
end

if #live >= requested then
  if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'wake', '1') end
  local reply = {0, limit}
  for _, permit in ipairs(live) do
    reply[#reply + 1] = permit[3]
    reply[#reply + 1] = tonumber(permit[2])
    reply[#reply + 1] = permit[1] - now
  end
  return reply
end

-- As for locks: the token is at least the server's time in microseconds,
-- so it keeps rising when the record (and its counter) is gone after the
-- idle retention or a restart without persistence.
local fence, fence_text = now, nil
if last_fence and last_fence >= now then
  fence = last_fence + 1
  fence_text = string.format('%.0f', fence)
else
  -- Usually the clock itself: TIME's digits, as in acquire.lua.
  fence_text = clock[1] .. ('00000'):sub(#clock[2]) .. clock[2]
end
redis.call('HSET', KEYS[1],
  'limit', ARGV[3],
  'fence', fence_text,
  own_field, expires_at .. ':' .. fence_text .. ':' .. ARGV[2])
keep()
return {1, fence}
