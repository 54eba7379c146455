"""The Lua scripts `RedisStore` runs: each one atomic on the Redis server."""

from __future__ import annotations

__all__ = ["REVOKE", "ROTATE", "UNLOCK"]

# Revocations store their `until` (unix ms) as the value so a later, shorter revoke never shortens one.
# KEYS: revocation keys. ARGV: until (unix ms), the revocations channel, then each key's id. What changed is
# published in the same script, atomically with the write: no mirror can see one without the other.
REVOKE = """
local until_ms = tonumber(ARGV[1])
local changed = {}
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '0') or 0
  if until_ms > current then
    redis.call('SET', key, ARGV[1])
    redis.call('PEXPIREAT', key, ARGV[1])
    changed[#changed + 1] = ARGV[i + 2]
  end
end
if #changed > 0 then
  redis.call('PUBLISH', ARGV[2], '{"until":' .. ARGV[1] .. ',"ids":' .. cjson.encode(changed) .. '}')
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
