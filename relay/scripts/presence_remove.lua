-- Remove a member from a room's presence; announce member_left only if it
-- was there (so a member leaves exactly once).
-- KEYS[1] presence hash, KEYS[2] room channel
-- ARGV[1] session, ARGV[2] publish command
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call(ARGV[2], KEYS[2], 'l' .. v)
return 1
