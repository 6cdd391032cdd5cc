-- A fenced write: set a value only if the fence stored beside it is lower
-- than the writer's. One hash holds both (fields `fence` and `value`), so the
-- script touches one key and runs on a Redis Cluster as on one server.
-- KEYS[1] the hash; ARGV[1] the writer's fence (decimal, no leading zeros);
-- ARGV[2] the value.
-- Returns {1, fence} when written, {0, stored fence} when refused.
--
-- Fences are compared as decimal strings (length, then text): a Lua number
-- is a double and would round tokens above 2^53.
local function lower(a, b)
    if #a ~= #b then
        return #a < #b
    end
    return a < b
end

local stored = redis.call('HGET', KEYS[1], 'fence')
if stored and not lower(stored, ARGV[1]) then
    return {0, stored}
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return {1, ARGV[1]}
