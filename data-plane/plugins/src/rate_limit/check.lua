-- Tollgate rate limit: check and count one request, atomically.
--
-- KEYS[1]  the counter key
-- ARGV[1]  algorithm: 1 = sliding window, 2 = GCRA
-- ARGV[2]  limit (requests per window)
-- ARGV[3]  window, microseconds
-- ARGV[4]  burst (GCRA: extra requests admitted at once)
--
-- The clock is Redis's own (TIME), so every data plane sees the same windows.
-- A rejected request writes nothing: it does not consume quota. An admitted
-- one writes the counter and its expiry in the same step, so no key is ever
-- left without a TTL.
--
-- Returns {allowed, a, b, c}:
--   sliding window: {allowed, previous count, current count, microseconds into the window}
--   GCRA:           {allowed, theoretical arrival time, now, 0} (microseconds)
-- The data plane derives remaining / reset / retry-after from these with the
-- same code its in-process limiter uses.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local algorithm = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])

if algorithm == 1 then
  local index = math.floor(now / window)
  local elapsed = now - index * window
  local state = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
  local stored_index = tonumber(state[1])
  local current = tonumber(state[2]) or 0
  local previous = tonumber(state[3]) or 0
  if stored_index == nil then
    current, previous = 0, 0
  elseif stored_index == index then
    -- same window: counts as stored
  elseif stored_index + 1 == index then
    current, previous = 0, current
  else
    current, previous = 0, 0
  end
  local used = math.floor(previous * (window - elapsed) / window) + current
  if used >= limit then
    return {0, previous, current, elapsed}
  end
  current = current + 1
  redis.call('HSET', KEYS[1], 'i', string.format('%.0f', index), 'c', current, 'p', previous)
  -- Forget the counter once both windows it knows are past.
  local ttl_ms = math.ceil(((index + 2) * window - now) / 1000)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return {1, previous, current, elapsed}
end

local emission = math.max(1, math.floor(window / limit))
local tolerance = emission * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
if now < tat - tolerance then
  return {0, tat, now, 0}
end
tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return {1, tat, now, 0}
