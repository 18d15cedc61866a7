-- Read a room's position and a slice of its history, atomically. It
-- writes nothing: a room without meta reads as epoch "" and seq 0.
-- KEYS[1] meta hash {epoch, seq, bytes}, KEYS[2] history stream
-- ARGV[1] since, ARGV[2] before (0: none), ARGV[3] limit (0: position only)
-- ARGV[4] window (HistorySize)
-- Returns {epoch, seq, earliest, {{id, {field, value, ...}}, ...}}.
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local epoch, seq = m[1], tonumber(m[2])
if not epoch then
  return {'', 0, 0, {}}
end
local since, before = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local earliest = 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then
  earliest = tonumber(string.match(first[1][1], '^(%d+)'))
  local lo = seq - window + 1
  if lo > earliest then earliest = lo end
  if earliest > seq then earliest = 0 end
end
local entries = {}
if earliest > 0 and limit > 0 then
  local lo = since + 1
  if lo < earliest then lo = earliest end
  local hi = seq
  if before > 0 and before - 1 < hi then hi = before - 1 end
  if lo <= hi then
    if before > 0 then
      entries = redis.call('XREVRANGE', KEYS[2], hi, lo, 'COUNT', limit)
    else
      entries = redis.call('XRANGE', KEYS[2], lo, hi, 'COUNT', limit)
    end
  end
end
return {epoch, seq, earliest, entries}
