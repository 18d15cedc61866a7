-- Publish one or more messages to one room, atomically.
-- KEYS[1] meta hash {epoch, seq}, KEYS[2] history stream, KEYS[3] room channel
-- ARGV[1] epoch to use if the room has none (its history was lost)
-- ARGV[2] stream MAXLEN (approximate), ARGV[3] TTL in ms
-- ARGV[4] publish command: "publish" or "spublish"
-- ARGV[5..] message bodies (JSON), in order
-- Returns {epoch, seq1, seq2, ...}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local out = {epoch}
for i = 5, #ARGV do
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'd', ARGV[i])
  redis.call(ARGV[4], KEYS[3], 'm' .. seq .. ' ' .. epoch .. ' ' .. ARGV[i])
  out[#out + 1] = seq
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return out
