-- Remove every member of a dead node from one room's presence, announcing
-- member_left for each.
-- KEYS[1] presence hash, KEYS[2] room channel
-- ARGV[1] dead node id, ARGV[2] publish command
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local ok, m = pcall(cjson.decode, all[i + 1])
  if ok and type(m) == 'table' and m.node == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call(ARGV[2], KEYS[2], 'l' .. all[i + 1])
    n = n + 1
  end
end
return n
