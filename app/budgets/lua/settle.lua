-- Replace a reservation with the actual usage, once per reservation id.
-- KEYS: 1 reservations, 2 expiries, 3 in-flight, 4 minute usage hash, 5 day, 6 month
-- ARGV: 1 reservation id, 2 key id, 3 amounts per kind "a1,..,a6", 4 ttl per hash "tm,td,tmo",
--       5 keep the settled record until (caller's clock), 6 ttl of the team's state keys
-- Returns 1 if applied, 0 if the id was already settled.
local applied = settle_once(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], {KEYS[4], KEYS[5], KEYS[6]},
  split(ARGV[3]), split(ARGV[4]), ARGV[5])
extend(KEYS[1], ARGV[6])
extend(KEYS[2], ARGV[6])
return applied
