-- renew_run: ARGV lease id, ttl ms. Returns 1 renewed, 0 lost.
local r = redis.call('HMGET', REC, 'status', 'lease_id', 'expires_at_us')
local expires = tonumber(r[3])
if r[1] ~= 'running' or r[2] ~= ARGV[1] or not (expires and expires > now) then
  return 0
end
redis.call('HSET', REC, 'expires_at_us', int(now + tonumber(ARGV[2]) * 1000))
return 1
