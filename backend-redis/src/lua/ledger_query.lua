-- query: ARGV filter (a status | 'unfinished' | 'all'), 'asc'|'desc',
--        limit, cursor ms ('' = none), cursor key, record key prefix
-- ('stuck' is ledger_scan_stuck.lua: it must examine running records one
-- by one, so it walks the set in bounded steps.)
-- Returns {now µs, more 0|1, key1, HGETALL1, key2, HGETALL2, ...}.
-- Records are read by key prefix + member: same hash tag, same slot.
-- An entry whose record expired (ledger retention) is skipped and removed
-- from its set here, lazily: expiry runs no script that could remove it.
local filter = ARGV[1]
local desc = ARGV[2] == 'desc'
local limit = tonumber(ARGV[3])
local cms = tonumber(ARGV[4])
local ckey = ARGV[5]
local sets
if filter == 'unfinished' then sets = {'pending', 'running', 'failed'}
elseif filter == 'all' then sets = {'pending', 'running', 'succeeded', 'failed', 'ignored'}
elseif IDX[filter] then sets = {filter}
else return redis.error_reply('unknown ledger filter ' .. filter) end

-- Byte order, as the sorted sets and the Rust side order keys (Lua's `<`
-- on strings follows the server's locale).
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function after_cursor(s, m)
  if not cms then return true end
  if desc then return s < cms or (s == cms and less(m, ckey)) end
  return s > cms or (s == cms and less(ckey, m))
end

local got = {}
local gone = {}
local batch = limit + 1
for _, st in ipairs(sets) do
  local n, offset = 0, 0
  while n <= limit do
    local page
    if desc then
      page = redis.call('ZREVRANGEBYSCORE', IDX[st], cms and ARGV[4] or '+inf', '-inf',
        'WITHSCORES', 'LIMIT', offset, batch)
    else
      page = redis.call('ZRANGEBYSCORE', IDX[st], cms and ARGV[4] or '-inf', '+inf',
        'WITHSCORES', 'LIMIT', offset, batch)
    end
    for i = 1, #page, 2 do
      local m, s = page[i], tonumber(page[i + 1])
      if n <= limit and after_cursor(s, m) then
        if redis.call('EXISTS', ARGV[6] .. m) == 0 then
          gone[#gone + 1] = {st, m}
        else
          got[#got + 1] = {s, m}
          n = n + 1
        end
      end
    end
    if #page < 2 * batch then break end
    offset = offset + batch
  end
end
-- Removed only now: removing while paging by offset would skip entries.
for _, g in ipairs(gone) do redis.call('ZREM', IDX[g[1]], g[2]) end
table.sort(got, function(a, b)
  if a[1] ~= b[1] then
    if desc then return a[1] > b[1] end
    return a[1] < b[1]
  end
  if desc then return less(b[2], a[2]) end
  return less(a[2], b[2])
end)
local out = {now, #got > limit and 1 or 0}
for i = 1, math.min(#got, limit) do
  local m = got[i][2]
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGETALL', ARGV[6] .. m)
end
return out
