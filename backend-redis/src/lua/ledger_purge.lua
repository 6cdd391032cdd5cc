-- purge: ARGV age ms, record key prefix. Deletes finished records whose
-- updated_at is at least `age` ago; raises the high-water to their fences
-- so a purged key's next run still gets a larger token. Returns the count.
-- Entries whose record already expired (ledger retention) are dropped
-- without being counted: their fence went into the high-water at finish.
local cutoff = now_ms - tonumber(ARGV[1])
local hw = tonumber(redis.call('GET', HW)) or 0
local count = 0
for _, st in ipairs({'succeeded', 'ignored'}) do
  local members = redis.call('ZRANGEBYSCORE', IDX[st], '-inf', cutoff)
  for _, m in ipairs(members) do
    local fence = tonumber(redis.call('HGET', ARGV[2] .. m, 'fence'))
    if fence and fence > hw then hw = fence end
    if redis.call('DEL', ARGV[2] .. m) == 1 then count = count + 1 end
    redis.call('ZREM', IDX[st], m)
  end
end
if hw > 0 then redis.call('SET', HW, int(hw)) end
return count
