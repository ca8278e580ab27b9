-- Takes a concurrency slot (a lease) if fewer than the limit are live.
--
-- KEYS[1]  the scope value's lease set (member: lease id, score: expiry ms)
-- ARGV[1]  limit
-- ARGV[2]  lease TTL, ms
-- ARGV[3]  the new lease's id
--
-- Returns 1 (taken) or 0 (every slot held). Times are Redis's clock.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
