-- Record a member in a room's presence and announce member_joined.
-- KEYS[1] presence hash, KEYS[2] room channel
-- ARGV[1] session, ARGV[2] member JSON, ARGV[3] publish command, ARGV[4] TTL in ms
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call(ARGV[3], KEYS[2], 'j' .. ARGV[2])
return 1
