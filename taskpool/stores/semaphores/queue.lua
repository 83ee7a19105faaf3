-- queue.lua: a waiter's place in the queue of a semaphore, without asking for slots.
-- Runs after common.lua (key layout, waiters: join, leave, expire_waiters).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] "join":    ARGV[2] waiter, ARGV[3] count, ARGV[4] arrival_ms ("0": now), ARGV[5] ttl_ms.
--                    Takes a place (or keeps the one it has); returns its arrival_ms.
--         "refresh": ARGV[2] ttl_ms, ARGV[3..] waiters. Each one still queued keeps its place
--                    ttl_ms longer; returns how many were still queued.
--         "leave":   ARGV[2] capacity, ARGV[3..] waiters. Forgets their places and wakes the
--                    waiters that fit now; returns how many places there were.

local mode = ARGV[1]
local now = now_ms()
if mode == 'join' then
  local waiter, count = ARGV[2], tonumber(ARGV[3])
  local arrival, ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
  arrival = arrival_of(waiter, arrival, now)
  join(waiter, count, arrival, ttl_ms, now)
  return string.format('%.0f', arrival)
end
if mode == 'refresh' then
  local ttl_ms, kept = tonumber(ARGV[2]), 0
  local due = string.format('%.0f', now + ttl_ms)
  for i = 3, #ARGV do
    if redis.call('ZSCORE', DUE, ARGV[i]) then
      redis.call('ZADD', DUE, due, ARGV[i])
      kept = kept + 1
    end
  end
  if kept > 0 then
    keep_line(ttl_ms)
  end
  return kept
end
local gone = 0
for i = 3, #ARGV do
  gone = gone + leave(ARGV[i])
end
if gone > 0 then
  wake(tonumber(ARGV[2]))
end
return gone
