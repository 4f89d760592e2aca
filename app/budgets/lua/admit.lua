-- Reserve a request's worst case in every limited window of its team and key, or refuse.
-- KEYS: 1 team limits, 2 key limits, 3 reservations, 4 expiries, 5 in-flight,
--       6 minute usage hash, 7 day usage hash, 8 month usage hash
-- ARGV: 1 now (caller's clock), 2 reservation id, 3 reservation expiry, 4 ttl of the team's state keys,
--       5 replace (0/1), 6 key id, 7 amounts per kind "a1,..,a6",
--       8 fallback limits "team1,..,team6,key1,..,key6", 9 deadline (unix s), 10 record ttl (s)
-- Returns {1, w, used, reserved, limit, ...} reserved; {0, w, used, reserved, limit, hard} refused;
--         {2, server time} arrived after its deadline; {3} the id was already settled.

-- The caller stops waiting at its deadline and then releases the id: an admit that only reaches
-- Redis later (a stall, a queue) must change nothing, or its reservation would be orphaned.
local t = redis.call('TIME')
if tonumber(t[1]) + tonumber(t[2]) / 1e6 > tonumber(ARGV[9]) then return {2, tonumber(t[1])} end

local PERIOD = {6, 6, 7, 8, 7, 8}
local rid = ARGV[2]
local held = redis.call('HGET', KEYS[3], rid)
if held == SETTLED then return {3} end
purge(KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[10])
held = redis.call('HGET', KEYS[3], rid)
local amounts = split(ARGV[7])
local fallback = split(ARGV[8])
local limits = {limits_of(KEYS[1], fallback, 0), limits_of(KEYS[2], fallback, 6)}

-- An id that holds a live reservation is replaced, never added twice: a retried admit (its reply
-- lost on a broken connection) must not leave a second amount in flight. A readmit does the same.
local old = {}
if is_live(held) then
  local list = cjson.decode(held)
  for i = 1, #list, 2 do old[list[i]] = tonumber(list[i + 1]) end
end

local active = {}
local soft, hard = nil, nil
for w = 1, 12 do
  local kind = (w - 1) % 6 + 1
  local limit = limits[(w <= 6) and 1 or 2][kind]
  if limit >= 0 then
    local hash = KEYS[PERIOD[kind]]
    local f = field(w, ARGV[6])
    local slot = hash .. '|' .. f
    local amount = tonumber(amounts[kind])
    local used = tonumber(redis.call('HGET', hash, f) or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[5], slot) or '0') - (old[slot] or 0)
    if used + reserved + amount > limit then
      if used + amount > limit then
        if not hard then hard = {0, w, used, reserved, limit, 1} end
      elseif not soft then
        soft = {0, w, used, reserved, limit, 0}
      end
    end
    active[#active + 1] = {w, slot, kind, used, reserved, limit}
  end
end
if hard then return hard end
if soft then return soft end

if is_live(held) then free(KEYS[5], held) end
local rec = {}
local out = {1}
for _, a in ipairs(active) do
  local amount = amounts[a[3]]
  if amount ~= '0' then
    redis.call('HINCRBY', KEYS[5], a[2], amount)
    rec[#rec + 1] = a[2]
    rec[#rec + 1] = amount
  end
  out[#out + 1] = a[1]
  out[#out + 1] = a[4]
  out[#out + 1] = a[5] + tonumber(amount)
  out[#out + 1] = a[6]
end
if #rec > 0 then
  mark(KEYS[3], KEYS[4], rid, cjson.encode(rec), ARGV[3])
  extend(KEYS[3], ARGV[4])
  extend(KEYS[4], ARGV[4])
  extend(KEYS[5], ARGV[4])
elseif held then
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[4], rid)
end
return out
