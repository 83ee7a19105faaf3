-- release.lua: free the slots of `token` and wake the waiters at the front of the line that fit.
-- Runs after common.lua (key layout, now_ms, free_lease, expire_leases, wake).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] token
-- ARGV[2] capacity    which waiters can be woken
--
-- Returns the number of slots freed (>= 1),
--      or 0 when the token holds nothing (already released, or expired and reaped),
--      or -1 when the lease had expired but was not reaped yet: its slots are freed now, but
--         the holder ran past its lease, which the caller should report.

local token, capacity = ARGV[1], tonumber(ARGV[2])
local score = redis.call('ZSCORE', LEASES, token)
if not score then
  return 0
end
local freed = free_lease(token)
wake(capacity)
if tonumber(score) <= now_ms() then
  return -1
end
return freed
