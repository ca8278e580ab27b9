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
-- Returns "allowed a b c", four decimal integers in one bulk string (one
-- value for the client to parse instead of an array of four):
--   sliding window: allowed, previous count, current count, microseconds into the window
--   GCRA:           allowed, theoretical arrival time, now, 0 (microseconds)
-- The data plane derives remaining / reset / retry-after from these with the
-- same code its in-process limiter uses.

-- Redis 3.2-4 replicate a script that reads TIME and then writes only with
-- effects replication on; from 5 it is the default (and 7, which has
-- REDIS_VERSION_NUM, only deprecates the call), so it is skipped there.
if redis.replicate_commands and not redis.REDIS_VERSION_NUM then
  pcall(redis.replicate_commands)
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local algorithm = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])

local function answer(allowed, a, b, c)
  return string.format('%d %.0f %.0f %.0f', allowed, a, b, c)
end

if algorithm == 1 then
  local index = math.floor(now / window)
  local elapsed = now - index * window
  local state = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
  local stored_index = tonumber(state[1])
  local current = tonumber(state[2]) or 0
  local previous = tonumber(state[3]) or 0
  local same = stored_index == index
  if not same then
    if stored_index ~= nil and stored_index + 1 == index then
      previous = current
    else
      previous = 0
    end
    current = 0
  end
  local used = math.floor(previous * (window - elapsed) / window) + current
  if used >= limit then
    return answer(0, previous, current, elapsed)
  end
  if same then
    -- The window's index, previous count and expiry were written when it
    -- began (below) and still hold: one increment is all that changes.
    current = redis.call('HINCRBY', KEYS[1], 'c', 1)
  else
    current = 1
    redis.call('HSET', KEYS[1], 'i', string.format('%.0f', index), 'c', 1, 'p', previous)
    -- Forget the counter once both windows it knows are past.
    local ttl_ms = math.ceil(((index + 2) * window - now) / 1000)
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
  return answer(1, previous, current, elapsed)
end

local emission = math.max(1, math.floor(window / limit))
local tolerance = emission * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
if now < tat - tolerance then
  return answer(0, tat, now, 0)
end
tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return answer(1, tat, now, 0)
