-- retry: ARGV key, channel, message. Returns {1} requeued, {0, status}, {2} not found.
local r = redis.call('HMGET', REC, 'status', 'expires_at_us')
local status = r[1]
if not status then return {2} end
local expires = tonumber(r[2])
local stuck = status == 'running' and not (expires and expires > now)
if not (status == 'failed' or status == 'ignored' or stuck) then return {0, status} end
redis.call('HDEL', REC, 'lease_id', 'expires_at_us')
redis.call('HSET', REC, 'status', 'pending', 'updated_ms', int(now_ms))
keep_record()
set_status(ARGV[1], status, 'pending')
-- A stuck run ends here; a waiter should look again.
if stuck then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return {1}
