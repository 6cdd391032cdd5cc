-- enqueue: ARGV key, request hash ('' = none). Returns {1} or {0, status}.
local status = redis.call('HGET', REC, 'status')
if status then return {0, status} end
redis.call('HSET', REC, 'status', 'pending', 'attempts', '0', 'max_attempts', '1',
  'created_ms', int(now_ms), 'updated_ms', int(now_ms))
if ARGV[2] ~= '' then redis.call('HSET', REC, 'hash', ARGV[2]) end
set_status(ARGV[1], nil, 'pending')
return {1}
