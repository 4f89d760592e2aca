-- Settled, in-flight and limit of all twelve windows.
-- KEYS as admit.lua. ARGV: 1 now, 2 key id, 3 fallback limits (as admit's ARGV[8]), 4 record ttl (s)
local PERIOD = {6, 6, 7, 8, 7, 8}
purge(KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[4])
local fallback = split(ARGV[3])
local limits = {limits_of(KEYS[1], fallback, 0), limits_of(KEYS[2], fallback, 6)}
local out = {}
for w = 1, 12 do
  local kind = (w - 1) % 6 + 1
  local hash = KEYS[PERIOD[kind]]
  local f = field(w, ARGV[2])
  out[#out + 1] = tonumber(redis.call('HGET', hash, f) or '0')
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[5], hash .. '|' .. f) or '0')
  out[#out + 1] = limits[(w <= 6) and 1 or 2][kind]
end
return out
