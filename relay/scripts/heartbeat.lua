-- Record this node's heartbeat and claim the nodes that missed theirs.
-- The claim (ZREM inside this script) is atomic: exactly one caller gets
-- each dead node and cleans up after it.
-- KEYS[1] nodes sorted set (score: last heartbeat, Redis clock, ms)
-- ARGV[1] this node id, ARGV[2] dead after (ms), ARGV[3] TTL of the set (ms):
-- it outlives every node's last heartbeat long enough for the survivors'
-- cleanup, and goes when the last node is gone
-- Returns {added, {dead node ids}}; added = 1 if this node was not listed
-- (first heartbeat, or it had been declared dead, or Redis lost its data).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[2])))
for _, d in ipairs(dead) do
  redis.call('ZREM', KEYS[1], d)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {added, dead}
