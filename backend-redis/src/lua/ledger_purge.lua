-- purge: ARGV age ms, record key prefix, batch size, cutoff ms ('' = now - age).
-- Deletes finished records whose updated_at is at or before the cutoff, at
-- most `batch` entries per call, so one call never blocks the server for
-- long; the caller repeats with the returned cutoff (fixed by the first
-- call, so records finishing meanwhile do not keep it going) while `more`.
-- Raises the high-water to the deleted fences so a purged key's next run
-- still gets a larger token. Entries whose record already expired (ledger
-- retention) are dropped without being counted: their fence went into the
-- high-water at finish.
-- Returns {deleted, more 0|1, cutoff ms}.
local cutoff = tonumber(ARGV[4]) or (now_ms - tonumber(ARGV[1]))
local left = tonumber(ARGV[3])
local hw = tonumber(redis.call('GET', HW)) or 0
local count = 0
for _, st in ipairs({'succeeded', 'ignored'}) do
  if left > 0 then
    local members = redis.call('ZRANGEBYSCORE', IDX[st], '-inf', cutoff, 'LIMIT', 0, left)
    for _, m in ipairs(members) do
      local fence = tonumber(redis.call('HGET', ARGV[2] .. m, 'fence'))
      if fence and fence > hw then hw = fence end
      if redis.call('DEL', ARGV[2] .. m) == 1 then count = count + 1 end
      redis.call('ZREM', IDX[st], m)
    end
    left = left - #members
  end
end
if hw > 0 then redis.call('SET', HW, int(hw)) end
-- A full batch may have left some behind; an empty next call ends it.
return {count, left == 0 and 1 or 0, int(cutoff)}
