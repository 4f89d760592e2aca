-- Shared by every budget script (prepended to each). See app/budgets/redis_store.py for the keys.

local KIND = {'rpm', 'tpm', 'tpd', 'tpmo', 'usdd', 'usdm'}
local PERIOD_OF_KIND = {1, 1, 2, 3, 2, 3} -- kind -> period hash (1 minute, 2 day, 3 month)

-- A reservation's record in the reservations hash is either live (a JSON list: in-flight slot, amount,
-- ...) or one of these. Both stay until their expiry in the expiries sorted set.
local SETTLED = 's' -- settled: later admits, readmits and settles of this id are no-ops
local EXPIRED = 'x' -- released when it expired: a late settle still counts its usage, once

local function split(s)
  local out = {}
  for v in string.gmatch(s, '[^,]+') do out[#out + 1] = v end
  return out
end

-- Window w (1..12): team scope for 1..6, key scope for 7..12, kind (w - 1) % 6 + 1.
local function field(w, key_id)
  local kind = KIND[(w - 1) % 6 + 1]
  if w <= 6 then return 't:' .. kind end
  return 'k:' .. key_id .. ':' .. kind
end

local function is_live(rec)
  return rec and rec ~= SETTLED and rec ~= EXPIRED
end

-- Give back the in-flight amounts of a live record.
local function free(inf, rec)
  local list = cjson.decode(rec)
  for i = 1, #list, 2 do
    if redis.call('HINCRBY', inf, list[i], '-' .. list[i + 1]) <= 0 then
      redis.call('HDEL', inf, list[i])
    end
  end
end

-- Never shorten a key's TTL: the team's state keys hold records of differing lifetimes.
local function extend(key, ttl)
  if redis.call('TTL', key) < tonumber(ttl) then redis.call('EXPIRE', key, ttl) end
end

local function mark(res, exp, id, state, keep_until)
  redis.call('HSET', res, id, state)
  redis.call('ZADD', exp, keep_until, id)
end

-- Expired live reservations are released (and remembered as EXPIRED); expired SETTLED / EXPIRED
-- records are forgotten.
local function purge(res, exp, inf, now, record_ttl)
  local due = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(due) do
    local rec = redis.call('HGET', res, id)
    if is_live(rec) then
      free(inf, rec)
      mark(res, exp, id, EXPIRED, tonumber(now) + tonumber(record_ttl))
    else
      redis.call('HDEL', res, id)
      redis.call('ZREM', exp, id)
    end
  end
end

-- Settle once per reservation id: free the reservation if it is live, count the usage unless the id
-- was already settled, and remember the id as SETTLED until keep_until. Returns 1 if applied, 0 if not.
local function settle_once(res, exp, inf, id, key_id, hashes, amounts, ttls, keep_until)
  local rec = redis.call('HGET', res, id)
  if rec == SETTLED then return 0 end
  if is_live(rec) then free(inf, rec) end
  local touched = {}
  for w = 1, 12 do
    local kind = (w - 1) % 6 + 1
    if amounts[kind] ~= '0' then
      local p = PERIOD_OF_KIND[kind]
      redis.call('HINCRBY', hashes[p], field(w, key_id), amounts[kind])
      touched[p] = true
    end
  end
  for p = 1, 3 do
    if touched[p] then redis.call('EXPIRE', hashes[p], ttls[p]) end
  end
  mark(res, exp, id, SETTLED, keep_until)
  return 1
end

-- Published limits while the record is valid (field v: valid until, by the caller's clock, which
-- is always ARGV[1]), else the fallback limits fallback[base + 1 .. base + 6].
local function limits_of(key, fallback, base)
  local v = redis.call('HMGET', key, 'v', 'rpm', 'tpm', 'tpd', 'tpmo', 'usdd', 'usdm')
  local published = v[1] and tonumber(v[1]) > tonumber(ARGV[1])
  local out = {}
  for i = 1, 6 do
    if published then out[i] = tonumber(v[i + 1]) else out[i] = tonumber(fallback[base + i]) end
  end
  return out
end
