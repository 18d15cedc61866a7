-- Check a room's position against what a node delivered, starting a new
-- epoch if the room has none or went back in time (same epoch, lower seq).
-- KEYS[1] meta hash {epoch, seq, bytes}, KEYS[2] history stream
-- ARGV[1] epoch to start, ARGV[2] known epoch ("" if none),
-- ARGV[3] known seq, ARGV[4] TTL in ms
-- Returns {epoch, seq}.
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local epoch, seq = m[1], tonumber(m[2]) or 0
if not epoch or (epoch == ARGV[2] and seq < tonumber(ARGV[3])) then
  epoch, seq = ARGV[1], 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'bytes', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {epoch, seq}
