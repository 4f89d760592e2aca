-- Publish a team's or key's limits so every replica enforces them on its next request.
-- KEYS: 1 limits record. ARGV: 1 valid until (caller's clock), 2 redis ttl, 3..8 limit per kind.
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'rpm', ARGV[3], 'tpm', ARGV[4], 'tpd', ARGV[5],
           'tpmo', ARGV[6], 'usdd', ARGV[7], 'usdm', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
