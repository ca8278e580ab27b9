-- Tollgate rate limit, `sync: batched`: add one data plane's increments of
-- the last interval to a counter and read back the fleet's total.
--
-- KEYS[1]  the counter key (the same key and layout `check.lua` uses)
-- ARGV[1]  algorithm: 1 = sliding window, 2 = GCRA
-- ARGV[2]  limit (requests per window)
-- ARGV[3]  window, microseconds
-- ARGV[4]  sliding window: the window index the increments were counted in
--          (on Redis's clock, as the data plane tracks it); GCRA: when the
--          first of the increments was admitted (microseconds, Redis's clock)
-- ARGV[5]  requests admitted in that window (GCRA: in the interval)
-- ARGV[6]  sliding window: requests admitted in the window before it
--
-- The data plane already admitted these requests, so nothing is refused
-- here: the script only counts. Increments for a window two or more behind
-- Redis's are dropped (they no longer weigh on any decision).
--
-- Returns {index, previous, current, now} (sliding window) or
-- {0, tat, 0, now} (GCRA), microseconds on Redis's clock.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local algorithm = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local from = tonumber(ARGV[4])
local added = tonumber(ARGV[5])
local added_before = tonumber(ARGV[6])

if algorithm == 1 then
  local index = math.floor(now / window)
  local state = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
  local stored_index = tonumber(state[1])
  local current = tonumber(state[2]) or 0
  local previous = tonumber(state[3]) or 0
  if stored_index == nil then
    current, previous = 0, 0
  elseif stored_index == index then
    -- same window
  elseif stored_index + 1 == index then
    current, previous = 0, current
  else
    current, previous = 0, 0
  end
  if from >= index then
    current = current + added
    previous = previous + added_before
  elseif from + 1 == index then
    previous = previous + added
  end
  if added > 0 or added_before > 0 then
    redis.call('HSET', KEYS[1], 'i', string.format('%.0f', index), 'c', current, 'p', previous)
    local ttl_ms = math.ceil(((index + 2) * window - now) / 1000)
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
  return {index, previous, current, now}
end

local emission = math.max(1, math.floor(window / limit))
local tat = tonumber(redis.call('GET', KEYS[1])) or now
-- The increments arrived over the interval, from `from` on: an idle counter
-- (tat in the past) counts them from then, not from now, which would push
-- the arrival time one interval too far.
local since = math.min(from, now)
if tat < since then
  tat = since
end
if added > 0 then
  tat = tat + emission * added
  if tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
end
if tat < now then
  tat = now
end
return {0, tat, 0, now}
