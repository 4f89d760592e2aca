-- Apply work counted locally while Redis was unreachable: one batch of one team, at most once.
-- KEYS: 1 batch marker, 2 reservations, 3 expiries, 4 in-flight, 5..4+n usage hashes, then m limit
--       records to delete
-- ARGV: 1 marker ttl, 2 n, 3 m, 4 keep settled records until (caller's clock), 5 ttl of the team's
--       state keys, 6..5+n ttl per usage hash, then per settle: reservation id, key id,
--       "i,j,k" (its minute, day and month hash among the n), amounts "a1,..,a6"
-- Each settle goes through settle_once, so a settle that had in fact reached Redis before (its reply
-- lost) is not counted again; the marker makes a retried batch a no-op as a whole.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
for j = 1, m do redis.call('DEL', KEYS[4 + n + j]) end
local base = 5 + n
local applied = 0
for i = base + 1, #ARGV, 4 do
  local idx = split(ARGV[i + 2])
  local hashes, ttls = {}, {}
  for p = 1, 3 do
    local h = tonumber(idx[p])
    hashes[p] = KEYS[4 + h]
    ttls[p] = ARGV[5 + h]
  end
  applied = applied + settle_once(KEYS[2], KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1], hashes, split(ARGV[i + 3]),
    ttls, ARGV[4])
end
if #ARGV > base then
  extend(KEYS[2], ARGV[5])
  extend(KEYS[3], ARGV[5])
end
return applied + 1
