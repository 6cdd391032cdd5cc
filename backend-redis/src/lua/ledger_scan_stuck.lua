-- scan_stuck: one step of a stuck-runs query.
-- ARGV 'asc'|'desc', want (stuck records still wanted, >= 1),
--      budget (running entries to examine at most, >= 1),
--      position ms ('' = from the start), position key, record key prefix
-- Whether a run is stuck depends on the time, so no set holds the stuck
-- ones: they are found by walking the running set in the query's order
-- ((updated ms, key), as the sorted set orders its members). A script
-- blocks the server, so each call examines at most `budget` entries after
-- the position and the caller calls again from the returned one, instead
-- of one call walking a set of any size.
-- Returns {now µs, examined, last ms, last key, key1, HGETALL1, ...}: the
-- stuck records among the examined entries (at most `want`), and the last
-- entry examined (the next call's position), or '' '' when the set ended.
local desc = ARGV[1] == 'desc'
local want = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local pms = tonumber(ARGV[4])
local pkey = ARGV[5]
local set = IDX.running

-- Byte order, as the sorted set orders members of one score (Lua's `<`
-- on strings follows the server's locale).
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- Entries from index `from` to `to` (0-based) in the query's order.
local function range(from, to)
  if desc then return redis.call('ZREVRANGE', set, from, to, 'WITHSCORES') end
  return redis.call('ZRANGE', set, from, to, 'WITHSCORES')
end

-- The index of the first entry after the position, in O(log n) commands:
-- the position's rank if its member is still there with its score, else a
-- binary search among the entries of its score (the others are placed by
-- score alone, which ZCOUNT counts).
local start = 0
if pms then
  local rank
  if desc then rank = redis.call('ZREVRANK', set, pkey) else rank = redis.call('ZRANK', set, pkey) end
  if rank and tonumber(redis.call('ZSCORE', set, pkey)) == pms then
    start = rank + 1
  else
    local lo, hi
    if desc then
      lo = redis.call('ZCOUNT', set, '(' .. ARGV[4], '+inf')
      hi = redis.call('ZCOUNT', set, ARGV[4], '+inf')
    else
      lo = redis.call('ZCOUNT', set, '-inf', '(' .. ARGV[4])
      hi = redis.call('ZCOUNT', set, '-inf', ARGV[4])
    end
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local m = range(mid, mid)[1]
      local after
      if desc then after = less(m, pkey) else after = less(pkey, m) end
      if after then hi = mid else lo = mid + 1 end
    end
    start = lo
  end
end

local page = range(start, start + budget - 1)
local out = {now, 0, '', ''}
local examined, found = 0, 0
local gone = {}
for i = 1, #page, 2 do
  local m = page[i]
  examined = examined + 1
  out[3], out[4] = page[i + 1], m
  local r = redis.call('HMGET', ARGV[6] .. m, 'status', 'expires_at_us')
  if not r[1] then
    -- Its record is gone (deleted by hand): drop the entry, as query does.
    gone[#gone + 1] = m
  else
    local expires = tonumber(r[2])
    if r[1] == 'running' and not (expires and expires > now) then
      found = found + 1
      out[#out + 1] = m
      out[#out + 1] = redis.call('HGETALL', ARGV[6] .. m)
      if found >= want then break end
    end
  end
end
out[2] = examined
-- A short page examined to its end: nothing is left after it.
if #page < 2 * budget and examined == #page / 2 then out[3], out[4] = '', '' end
-- Removed only now, after the ranks above were used.
for _, m in ipairs(gone) do redis.call('ZREM', set, m) end
return out
