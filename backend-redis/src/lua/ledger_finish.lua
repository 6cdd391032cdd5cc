-- finish: ARGV key, lease id, 's'|'f', result present '1'|'0', result,
--         error JSON, error slot, retryable '1'|'0', channel, message,
--         retention ms ('0' = keep until purge)
-- Returns {1, new status} or {0} (not held).
local r = redis.call('HMGET', REC, 'status', 'lease_id', 'attempts', 'max_attempts', 'fence')
if r[1] ~= 'running' or r[2] ~= ARGV[2] then return {0} end
local new
if ARGV[3] == 's' then
  new = 'succeeded'
  if ARGV[4] == '1' then
    redis.call('HSET', REC, 'result', ARGV[5])
  else
    redis.call('HDEL', REC, 'result')
  end
else
  redis.call('HSET', REC, 'err' .. ARGV[7], ARGV[6])
  if ARGV[8] == '1' and (tonumber(r[3]) or 0) < (tonumber(r[4]) or 1) then
    new = 'failed'
  else
    new = 'ignored'
  end
end
redis.call('HDEL', REC, 'lease_id', 'expires_at_us')
redis.call('HSET', REC, 'status', new, 'updated_ms', int(now_ms), 'finished_ms', int(now_ms))
set_status(ARGV[1], r[1], new)
local retention = tonumber(ARGV[11]) or 0
if retention > 0 and new ~= 'failed' then
  -- The record, and with it the key's last fence, will vanish without a
  -- script seeing it: raise the high-water to that fence now, as purge
  -- does, so the key's next run still starts above it.
  local fence = tonumber(r[5])
  local hw = tonumber(redis.call('GET', HW))
  if fence and not (hw and hw >= fence) then redis.call('SET', HW, int(fence)) end
  redis.call('PEXPIRE', REC, int(retention))
end
redis.call('PUBLISH', ARGV[9], ARGV[10])
return {1, new}
