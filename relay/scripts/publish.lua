-- Publish one or more messages to one room, atomically: rollback check,
-- idempotency, sequencing, capped history, fan-out.
-- KEYS[1] meta hash {epoch, seq, bytes}, KEYS[2] history stream,
-- KEYS[3] room channel, KEYS[4..] idempotency keys, one per message that
-- has one, in message order (all in the room's hash slot)
-- ARGV[1] epoch to start if the room has none or went back in time
-- ARGV[2] history cap in messages, ARGV[3] TTL in ms (meta and history)
-- ARGV[4] publish command: "publish" or "spublish"
-- ARGV[5] known epoch ("" if none), ARGV[6] known seq
-- ARGV[7] history cap in bytes (sum of stored bodies)
-- ARGV[8] idempotency window in ms
-- ARGV[9..] per message two values: "1" if it has an idempotency key (the
-- next of KEYS[4..]) else "0", then its body (JSON)
-- Returns {epoch, seq1, repeat1, seq2, repeat2, ...}; repeat is 1 for a
-- message whose key was already published in this epoch (seq: the
-- original's; nothing published again).
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'bytes')
local epoch, seq, bytes = m[1], tonumber(m[2]) or 0, tonumber(m[3]) or 0
if not epoch or (epoch == ARGV[5] and seq < tonumber(ARGV[6])) then
  -- Never used, expired, or the bus lost writes the caller delivered
  -- (failover): a new epoch, so no seq is ever reused.
  epoch, seq, bytes = ARGV[1], 0, 0
  redis.call('DEL', KEYS[2])
end
local out = {epoch}
local k = 4
local added = 0
for i = 9, #ARGV, 2 do
  local key = nil
  if ARGV[i] == '1' then
    key = KEYS[k]
    k = k + 1
  end
  local body = ARGV[i + 1]
  local orig = nil
  if key then
    local prev = redis.call('GET', key)
    if prev then
      local pe, ps = string.match(prev, '^(%S+) (%d+)$')
      if pe == epoch then orig = tonumber(ps) end
    end
  end
  if orig then
    out[#out + 1] = orig
    out[#out + 1] = 1
  else
    seq = seq + 1
    redis.call('XADD', KEYS[2], seq .. '-0', 'd', body)
    bytes = bytes + #body
    redis.call(ARGV[4], KEYS[3], 'm' .. seq .. ' ' .. epoch .. ' ' .. body)
    if key then
      redis.call('SET', key, epoch .. ' ' .. seq, 'PX', ARGV[8])
    end
    out[#out + 1] = seq
    out[#out + 1] = 0
    added = added + 1
  end
end
if added > 0 then
  -- Drop the oldest entries over either cap, never the newest one.
  local maxlen, maxbytes = tonumber(ARGV[2]), tonumber(ARGV[7])
  local n = redis.call('XLEN', KEYS[2])
  local last = nil
  local from = '-'
  while n > 1 and (n > maxlen or bytes > maxbytes) do
    local es = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', 32)
    if #es == 0 then break end
    for _, e in ipairs(es) do
      if n <= 1 or (n <= maxlen and bytes <= maxbytes) then break end
      bytes = bytes - #e[2][2]
      n = n - 1
      last = e[1]
    end
    from = '(' .. last
  end
  if last then
    redis.call('XTRIM', KEYS[2], 'MINID', (tonumber(string.match(last, '^(%d+)')) + 1) .. '-0')
  end
  if bytes < 0 then bytes = 0 end
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', seq, 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return out
