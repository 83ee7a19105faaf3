-- renew.lua: extend the lease of `token` if it still holds it.
-- Runs after common.lua (key layout, now_ms, free_lease, expire_leases, wake).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] token
-- ARGV[2] ttl_ms      new lease length, counted from now
-- ARGV[3] capacity    which waiters can be woken
--
-- Returns expires_at_ms (> 0) when renewed,
--      or -1 when the token holds nothing (released, or expired and reaped: its slots may
--         already belong to someone else),
--      or -2 when the lease had expired but was not reaped yet: it is lost all the same, and
--         this call frees its slots and wakes a waiter.

local token, ttl_ms, capacity = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local score = redis.call('ZSCORE', LEASES, token)
if not score then
  return -1
end
if tonumber(score) <= now then
  free_lease(token)
  wake(capacity)
  return -2
end
local expires_at_ms = now + ttl_ms
redis.call('ZADD', LEASES, 'XX', expires_at_ms, token)
expire_when_idle()
return expires_at_ms
