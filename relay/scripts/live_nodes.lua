-- List the nodes whose last heartbeat is recent enough.
-- KEYS[1] nodes sorted set; ARGV[1] dead after (ms)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now - tonumber(ARGV[1])), '+inf')
