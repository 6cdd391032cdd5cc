-- get: Returns {now µs, HGETALL} (an empty list: no record).
return {now, redis.call('HGETALL', REC)}
