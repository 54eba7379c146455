"""The Lua scripts `RedisStore` runs: each one atomic on the Redis server."""

from __future__ import annotations

__all__ = ["GCRA", "REVOKE", "ROTATE", "UNLOCK"]

# Revocations store their `until` (unix ms) as the value so a later, shorter revoke never shortens one;
# one with a cutoff stores `until:before` (both unix ms) and refuses only tokens issued before `before`.
# Merging follows `_merge_cutoff`: the later until, the later cutoff, no cutoff beats any.
# KEYS: revocation keys. ARGV: until (unix ms), the revocations channel, before (unix ms, or '' for none),
# then each key's id. What changed is published in the same script, atomically with the write: no mirror
# can see one without the other (mirrors merge the message the same way).
REVOKE = """
local until_ms = tonumber(ARGV[1])
local before = tonumber(ARGV[3])
local changed = {}
for i, key in ipairs(KEYS) do
  local raw = redis.call('GET', key)
  local cur_until, cur_before, known = 0, nil, false
  if raw then
    local u, b = string.match(raw, '^(%d+):?(%d*)$')
    if u then
      known = true
      cur_until = tonumber(u)
      if b ~= '' then cur_before = tonumber(b) end
    end
  end
  local new_until = math.max(cur_until, until_ms)
  local new_before = nil
  if before and not (known and not cur_before) then
    new_before = before
    if cur_before and cur_before > before then new_before = cur_before end
  end
  if new_until ~= cur_until or not known or new_before ~= cur_before then
    local value = string.format('%d', new_until)
    if new_before then value = value .. ':' .. string.format('%d', new_before) end
    redis.call('SET', key, value)
    redis.call('PEXPIREAT', key, string.format('%d', new_until))
    changed[#changed + 1] = ARGV[i + 3]
  end
end
if #changed > 0 then
  local extra = ''
  if before then extra = ',"before":' .. ARGV[3] end
  redis.call('PUBLISH', ARGV[2], '{"until":' .. ARGV[1] .. extra .. ',"ids":' .. cjson.encode(changed) .. '}')
end
return 0
"""

# KEYS: family live-token key, family revocation key. ARGV: presented jti, new jti, until (unix ms),
# the revocations channel, the family id. A replay publishes the family's revocation and returns its until.
ROTATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'revoked' end
local live = redis.call('GET', KEYS[1])
if not live then return 'revoked' end
if live == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
  return 'rotated'
end
local until_ms = tonumber(ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  local t = redis.call('TIME')
  local live_until = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + pttl
  if live_until > until_ms then until_ms = live_until end
end
local s = string.format('%d', until_ms)
redis.call('SET', KEYS[2], s)
redis.call('PEXPIREAT', KEYS[2], s)
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], '{"until":' .. s .. ',"ids":' .. cjson.encode({ARGV[5]}) .. '}')
return {'replayed', s}
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# GCRA rate limits (see gateway.store.gcra, whose `apply_gcra` this mirrors), all or nothing, on the
# server's clock (TIME) so every instance agrees on now. Times are integer microseconds.
# KEYS: the buckets. ARGV: interval_us, burst, cost per key (3 per key). ARGV[#]: 1 = charge, 0 = refund
# (a cluster call whose other slots denied gives back what it took: TAT -= cost * interval, not below now).
# Returns per key: allowed (1/0), remaining, reset_us, retry_after_us.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = tonumber(ARGV[#ARGV])
local out = {}
local tats = {}
local denied = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  local base = math.max(tat, now)
  if mode == 0 then
    local back = math.max(now, tat - interval * cost)
    if back > now then
      redis.call('SET', key, string.format('%d', back), 'PX', math.ceil((back - now) / 1000))
    else
      redis.call('DEL', key)
    end
  else
    local new_tat = base + interval * cost
    local allow_at = new_tat - interval * burst
    if allow_at > now then
      denied = true
      local left = math.max(0, math.floor((now + interval * burst - base) / interval))
      out[#out + 1] = {0, left, base - now, allow_at - now}
    else
      tats[i] = new_tat
      out[#out + 1] = {1, math.floor((now + interval * burst - new_tat) / interval), new_tat - now, 0}
    end
  end
end
if mode == 1 and not denied then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, string.format('%d', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000))
  end
end
return out
"""
