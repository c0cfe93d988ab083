"""Lua scripts that make each limit check-and-update atomic in Redis.

Times are integer microseconds from the Redis server's clock (`TIME`), so hosts whose clocks
disagree still share one timeline. Breaker states travel as 0 closed, 1 open, 2 half open.
Numbers go into strings through `string.format('%.17g')` (or as `redis.call` arguments, which
Redis formats the same way): Lua's own `..` keeps 14 digits and would round a microsecond time.
"""

from __future__ import annotations

_PRELUDE = """
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function extend_ttl(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function breaker_state(opened_key, now, cooldown)
  local opened = redis.call('GET', opened_key)
  if not opened then return 0 end
  if now < tonumber(opened) + cooldown then return 1 end
  return 2
end
"""

# KEYS: tat, daily hash {day, used}. ARGV: now_us or '', interval_us (0: none), tolerance_us,
# daily cap (-1: none). Returns 0 when a send was taken, else the microseconds to wait (>= 1).
RATE = (
    _PRELUDE
    + """
local DAY = 86400000000
local now = server_now()
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) end
local interval, tolerance, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day = math.floor(now / DAY)
local day_end = (day + 1) * DAY
if cap >= 0 then
  local counted = redis.call('HMGET', KEYS[2], 'day', 'used')
  local used = 0
  if tonumber(counted[1]) == day then used = tonumber(counted[2]) end
  if used >= cap then return math.max(1, math.ceil(day_end - now)) end
end
if interval > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now then return math.max(1, math.ceil(allow_at - now)) end
  local ttl = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', ttl)
end
if cap >= 0 then
  if tonumber(redis.call('HGET', KEYS[2], 'day')) ~= day then
    redis.call('HSET', KEYS[2], 'day', day, 'used', 0)
  end
  redis.call('HINCRBY', KEYS[2], 'used', 1)
  -- Kept an hour past midnight so a late clock still reads the finished day's count.
  redis.call('PEXPIRE', KEYS[2], math.ceil((day_end - now) / 1000) + 3600000)
end
return 0
"""
)

# KEYS: sessions zset (token -> lease expiry). ARGV: cap, lease_us, token. Returns 1 if taken.
ACQUIRE_CONNECTION = (
    _PRELUDE
    + """
local now = server_now()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
extend_ttl(KEYS[1], math.ceil(lease / 1000) + 1000)
return 1
"""
)

# KEYS: sessions zset. ARGV: lease_us, token. Returns 1 if extended, 0 if the lease had lapsed.
REFRESH_CONNECTION = (
    _PRELUDE
    + """
local now = server_now()
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expires or tonumber(expires) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[2])
extend_ttl(KEYS[1], math.ceil(lease / 1000) + 1000)
return 1
"""
)

# KEYS: opened-at. ARGV: cooldown_us. Returns the state.
BREAKER_STATE = (
    _PRELUDE
    + """
return breaker_state(KEYS[1], server_now(), tonumber(ARGV[1]))
"""
)

# KEYS: opened-at, probe. ARGV: cooldown_us, probe_ms. Returns 1 if the request may go.
ALLOW_REQUEST = (
    _PRELUDE
    + """
local state = breaker_state(KEYS[1], server_now(), tonumber(ARGV[1]))
if state == 0 then return 1 end
if state == 1 then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
)

# KEYS: opened-at, probe, failures zset. ARGV: cooldown_us, window_us, threshold, unique member,
# opened ttl_ms. Returns the state left behind.
RECORD_FAILURE = (
    _PRELUDE
    + """
local now = server_now()
local state = breaker_state(KEYS[1], now, tonumber(ARGV[1]))
if state == 1 then return 1 end
if state == 2 then
  redis.call('SET', KEYS[1], now, 'PX', ARGV[5])
  redis.call('DEL', KEYS[2])
  return 1
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
redis.call('ZADD', KEYS[3], now, ARGV[4])
extend_ttl(KEYS[3], math.ceil(window / 1000) + 1000)
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], now, 'PX', ARGV[5])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""
)

# KEYS: tat, daily hash, sessions zset, opened-at, failures zset. ARGV: cooldown_us, window_us.
# Returns {now_us, state, failures, tat or '', counted day or '', used or '', sessions}.
SNAPSHOT = (
    _PRELUDE
    + """
local now = server_now()
local counted = redis.call('HMGET', KEYS[2], 'day', 'used')
return {
  now,
  breaker_state(KEYS[4], now, tonumber(ARGV[1])),
  redis.call('ZCOUNT', KEYS[5], string.format('(%.17g', now - tonumber(ARGV[2])), '+inf'),
  redis.call('GET', KEYS[1]) or '',
  counted[1] or '',
  counted[2] or '',
  redis.call('ZCOUNT', KEYS[3], string.format('(%.17g', now), '+inf'),
}
"""
)
