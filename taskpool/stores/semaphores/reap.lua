-- reap.lua: free the slots of every lease that expired (its worker stopped renewing: it died),
-- and say whose they were, so a reader (`taskpool status`, `taskpool slots`) shows them as such
-- and leaves them free, not only the next acquire.
-- Runs after common.lua (key layout, now_ms, free_lease, expire_leases, wake).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] capacity    which waiters can be woken (a reader that does not know it passes a large
--                     number: the first 1000 waiters in line are woken, each tries once)
--
-- Returns a flat list token1, info1 (the lease's JSON), expires_at_ms1, slots freed1, ...

local capacity = tonumber(ARGV[1])
local reaped = {}
local freed = 0
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_ms(), 'WITHSCORES')
for i = 1, #expired, 2 do
  local token, expires_at_ms = expired[i], expired[i + 1]
  local info = redis.call('HGET', INFO, token) or '{}'
  local n = free_lease(token)
  freed = freed + n
  reaped[#reaped + 1] = token
  reaped[#reaped + 1] = info
  reaped[#reaped + 1] = expires_at_ms
  reaped[#reaped + 1] = n
end
if freed > 0 then
  wake(capacity)
end
return reaped
