-- begin: ARGV key, lease id, owner, ttl ms, max attempts, request hash ('' = none)
-- Returns {1, fence, attempt, took_over} started, or {0, now µs, HGETALL}
-- existing. took_over is 1 when the start replaced a running record, which
-- `startable` below allows only once its lease expired (the record was read
-- before this script wrote anything); a retried request of our own lease
-- id answers 0.
local r = redis.call('HMGET', REC, 'status', 'attempts', 'fence', 'lease_id', 'expires_at_us', 'hash')
local status = r[1]
local attempts = tonumber(r[2]) or 0
local expires = tonumber(r[5])
local ttl = tonumber(ARGV[4])
local max_attempts = tonumber(ARGV[5])
if status == 'running' and r[4] == ARGV[2] then
  -- The same request again (its reply was lost): keep the run.
  redis.call('HSET', REC, 'expires_at_us', int(now + ttl * 1000))
  return {1, tonumber(r[3]) or 0, attempts, 0}
end
local hash_ok = not (r[6] and ARGV[6] ~= '' and r[6] ~= ARGV[6])
local startable
if not status or status == 'pending' then
  startable = true
elseif status == 'failed' then
  startable = attempts < max_attempts
elseif status == 'running' then
  startable = not (expires and expires > now) and attempts < max_attempts
else
  startable = false
end
if not (hash_ok and startable) then
  return {0, now, redis.call('HGETALL', REC)}
end
-- As for locks: at least the server time in µs, above the key's last token
-- and above every token of a purged key (the high-water).
local fence = now
local last = tonumber(r[3])
if last and last + 1 > fence then fence = last + 1 end
local hw = tonumber(redis.call('GET', HW))
if hw and hw + 1 > fence then fence = hw + 1 end
if not status then
  redis.call('HSET', REC, 'created_ms', int(now_ms))
end
keep_record()
redis.call('HSET', REC, 'status', 'running', 'attempts', int(attempts + 1),
  'max_attempts', ARGV[5], 'fence', int(fence), 'owner', ARGV[3],
  'lease_id', ARGV[2], 'expires_at_us', int(now + ttl * 1000),
  'updated_ms', int(now_ms))
if not r[6] and ARGV[6] ~= '' then redis.call('HSET', REC, 'hash', ARGV[6]) end
set_status(ARGV[1], status, 'running')
local took_over = 0
if status == 'running' then took_over = 1 end
return {1, fence, attempts + 1, took_over}
