-- Moves the expiry of leases still in the set to now + TTL (a lease already
-- expired and dropped stays dropped).
--
-- KEYS[1]  the lease set
-- ARGV[1]  lease TTL, ms
-- ARGV[2..] lease ids
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
