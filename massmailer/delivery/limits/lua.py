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
-- The rate in force (aimd.effective_rate): the configured rate (0: none) or the temporary base
-- a throttle gave an unrated provider, times the factor a throttle cut. 0: no rate limit.
local function effective_rate(aimd_key, rate)
  local adaptive = redis.call('HMGET', aimd_key, 'factor', 'base')
  if rate <= 0 then
    if not adaptive[2] then return 0 end
    rate = tonumber(adaptive[2])
  end
  if adaptive[1] then rate = rate * tonumber(adaptive[1]) end
  return rate
end
-- GCRA's emission interval and burst tolerance in microseconds (policy.burst_for: a tenth of a
-- second's worth, at least one send).
local function gcra_params(rate)
  local interval = 1000000 / rate
  return interval, math.max(1, rate / 10) * interval
end
"""

# KEYS: tat, daily hash {day, used}, aimd hash. ARGV: now_us or '', configured rate per second
# (0: none), daily cap (-1: none). Returns 0 when a send was taken, else the microseconds to
# wait (>= 1).
RATE = (
    _PRELUDE
    + """
local DAY = 86400000000
local now = server_now()
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) end
local rate, cap = effective_rate(KEYS[3], tonumber(ARGV[2])), tonumber(ARGV[3])
local interval, tolerance = 0, 0
if rate > 0 then interval, tolerance = gcra_params(rate) end
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

# Shared by the reservation scripts: the clock (ARGV[1] overrides it, for tests), the UTC day,
# and how much of the daily cap is spent.
_DAILY = """
local DAY = 86400000000
local function clock(override)
  if override ~= '' then return tonumber(override) end
  return server_now()
end
local function used_today(daily_key, now)
  local counted = redis.call('HMGET', daily_key, 'day', 'used')
  if tonumber(counted[1]) == math.floor(now / DAY) then return tonumber(counted[2]) end
  return 0
end
local function to_reset(now)
  return math.max(1, math.ceil((math.floor(now / DAY) + 1) * DAY - now))
end
"""

# KEYS: tat, daily hash, aimd hash. ARGV: now_us or '', configured rate per second (0: none),
# horizon_us, daily cap (-1: none), how many slots. Takes up to that many next slots of the
# effective rate, each only if it is within the horizon, and none if the daily cap is spent;
# returns the microseconds until each slot taken (0: now), in order (empty: nothing taken).
# Reading the aimd hash here keeps one round trip per reservation.
RESERVE = (
    _PRELUDE
    + _DAILY
    + """
local now = clock(ARGV[1])
local rate = effective_rate(KEYS[3], tonumber(ARGV[2]))
local horizon, cap, wanted = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local waits = {}
if cap >= 0 and used_today(KEYS[2], now) >= cap then return waits end
if rate <= 0 then
  for i = 1, wanted do waits[i] = 0 end
  return waits
end
local interval, tolerance = gcra_params(rate)
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
for i = 1, wanted do
  local wait = math.max(0, tat + interval - tolerance - now)
  if wait > horizon then break end
  tat = tat + interval
  waits[i] = math.ceil(wait)
end
if #waits > 0 then
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', ttl)
end
return waits
"""
)

# KEYS: daily hash. ARGV: now_us or '', cap. Counts one send; returns 0, or the microseconds
# until UTC midnight when the cap is spent (nothing counted then).
TAKE_DAILY = (
    _PRELUDE
    + _DAILY
    + """
local now = clock(ARGV[1])
local used = used_today(KEYS[1], now)
if used >= tonumber(ARGV[2]) then return to_reset(now) end
redis.call('HSET', KEYS[1], 'day', math.floor(now / DAY), 'used', used + 1)
-- Kept an hour past midnight so a late clock still reads the finished day's count.
redis.call('PEXPIRE', KEYS[1], math.ceil(to_reset(now) / 1000) + 3600000)
return 0
"""
)

# KEYS: tat, daily hash, aimd hash. ARGV: now_us or '', configured rate per second (0: none),
# daily cap (-1: none). Read-only: the microseconds until a reservation could be had for now.
CAPACITY_WAIT = (
    _PRELUDE
    + _DAILY
    + """
local now = clock(ARGV[1])
local rate, cap = effective_rate(KEYS[3], tonumber(ARGV[2])), tonumber(ARGV[3])
if cap >= 0 and used_today(KEYS[2], now) >= cap then return to_reset(now) end
if rate <= 0 then return 0 end
local interval, tolerance = gcra_params(rate)
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
return math.ceil(math.max(0, tat + interval - tolerance - now))
"""
)

# KEYS: opened-at. ARGV: cooldown_us. Read-only: microseconds until an open breaker half-opens.
BREAKER_WAIT = (
    _PRELUDE
    + """
local opened = redis.call('GET', KEYS[1])
if not opened then return 0 end
return math.max(0, math.ceil(tonumber(opened) + tonumber(ARGV[1]) - server_now()))
"""
)

# KEYS: sessions zset (token -> lease expiry), wanted zset (holder -> want expiry). ARGV: cap,
# lease_us, token, holder ('' for none), want_us. Returns 1 if taken.
ACQUIRE_CONNECTION = (
    _PRELUDE
    + """
local now = server_now()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  -- Full: say who is waiting, so holders with more than their share give a session back.
  if ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
    extend_ttl(KEYS[2], math.ceil(tonumber(ARGV[5]) / 1000) + 1000)
  end
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
extend_ttl(KEYS[1], math.ceil(lease / 1000) + 1000)
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
return 1
"""
)

# KEYS: wanted zset. ARGV: holder. Returns how many other holders found the cap full lately.
CONNECTION_DEMAND = (
    _PRELUDE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', server_now())
local waiting = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then waiting = waiting - 1 end
return waiting
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

# KEYS: tat, daily hash, sessions zset, opened-at, failures zset, aimd hash. ARGV: cooldown_us,
# window_us. Returns {now_us, state, failures, tat or '', counted day or '', used or '',
# sessions, factor or '', temporary base or ''}.
SNAPSHOT = (
    _PRELUDE
    + """
local now = server_now()
local counted = redis.call('HMGET', KEYS[2], 'day', 'used')
local adaptive = redis.call('HMGET', KEYS[6], 'factor', 'base')
return {
  now,
  breaker_state(KEYS[4], now, tonumber(ARGV[1])),
  redis.call('ZCOUNT', KEYS[5], string.format('(%.17g', now - tonumber(ARGV[2])), '+inf'),
  redis.call('GET', KEYS[1]) or '',
  counted[1] or '',
  counted[2] or '',
  redis.call('ZCOUNT', KEYS[3], string.format('(%.17g', now), '+inf'),
  adaptive[1] or '',
  adaptive[2] or '',
}
"""
)

# The AIMD state (aimd.py) in one hash per provider: factor, base, cut_at, throttled_at,
# raised_at (microseconds), est (decaying success count) and est_at. A factor of 1 is stored as
# no factor, so an unthrottled provider's reservations read two empty fields.
_AIMD = """
local function fmt(x) return string.format('%.17g', x) end
local function decayed_estimate(fields, now, tau)
  local est, at = tonumber(fields.est) or 0, tonumber(fields.est_at)
  if not at then return est end
  return est * math.exp(-math.max(0, now - at) / tau)
end
local function read_aimd(key)
  local names = {'factor', 'base', 'cut_at', 'throttled_at', 'raised_at', 'est', 'est_at'}
  local values = redis.call('HMGET', key, unpack(names))
  local fields = {}
  for i, name in ipairs(names) do fields[name] = values[i] end
  return fields
end
"""

# KEYS: aimd hash. ARGV: configured rate per second (0: none), decrease, min factor,
# cut spacing_us, floor per second, estimate time constant_us, ttl_ms. Applies one throttle reply
# (aimd.cut); returns {factor, temporary base or ''}.
THROTTLE = (
    _PRELUDE
    + _AIMD
    + """
local now = server_now()
local a = read_aimd(KEYS[1])
local rate, tau = tonumber(ARGV[1]), tonumber(ARGV[6])
if rate <= 0 and not a.base then
  local recent = decayed_estimate(a, now, tau) / (tau / 1000000)
  a.base = fmt(math.max(recent, tonumber(ARGV[5])))
  redis.call('HSET', KEYS[1], 'base', a.base)
end
local factor = tonumber(a.factor) or 1
if not a.cut_at or now - tonumber(a.cut_at) >= tonumber(ARGV[4]) then
  factor = math.max(tonumber(ARGV[3]), factor * tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], 'factor', fmt(factor), 'cut_at', now)
end
redis.call('HSET', KEYS[1], 'throttled_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {fmt(factor), a.base or ''}
"""
)

# KEYS: aimd hash. ARGV: successes, increase per second, cooldown_us, max step_us, estimate time
# constant_us, ttl_ms. Counts a process's batched successes (aimd.note_sent); returns {factor,
# temporary base or ''}.
NOTE_SENT = (
    _PRELUDE
    + _AIMD
    + """
local now = server_now()
local a = read_aimd(KEYS[1])
local sent = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'est', fmt(decayed_estimate(a, now, tonumber(ARGV[5])) + sent),
  'est_at', now)
local factor = tonumber(a.factor)
if factor and sent > 0 then
  local start = math.max(tonumber(a.raised_at) or 0,
    (tonumber(a.throttled_at) or 0) + tonumber(ARGV[3]))
  if now > start then
    local step = math.min(now - start, tonumber(ARGV[4])) / 1000000
    factor = factor + tonumber(ARGV[2]) * step
    if factor >= 1 then
      redis.call('HDEL', KEYS[1], 'factor', 'base', 'cut_at', 'throttled_at', 'raised_at')
      a.base, factor = nil, nil
    else
      redis.call('HSET', KEYS[1], 'factor', fmt(factor), 'raised_at', now)
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {factor and fmt(factor) or '1', a.base or ''}
"""
)
