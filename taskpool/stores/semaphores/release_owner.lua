-- release_owner.lua: free every slot held by one owner (a killed prefork child "host:pid", or
-- with a prefix, every owner of a worker "host:"), waking as many waiters as slots were freed.
-- Runs after common.lua (key layout, now_ms, free_lease, expire_leases, wake).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] owner       the owner string given to acquire.lua
-- ARGV[2] match       "exact": owner == ARGV[1]; "prefix": owner starts with ARGV[1]
-- ARGV[3] capacity    which waiters can be woken
--
-- Returns the number of slots freed (expired but unreaped leases of the owner included).
-- The owner's waiters ("owner|..." of a worker, "owner/..." of a blocking acquire) lose their
-- places too.

local owner, match, capacity = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function owned(who)
  if match == 'prefix' then
    return string.sub(who, 1, #owner) == owner
  end
  return who == owner
end
local entries = redis.call('HGETALL', INFO)
local freed = 0
for i = 1, #entries, 2 do
  if owned(cjson.decode(entries[i + 1]).owner) then
    freed = freed + free_lease(entries[i])
  end
end
for _, waiter in ipairs(redis.call('ZRANGE', QUEUE, 0, -1)) do
  local who = string.match(waiter, '^(.-)|') or waiter -- a blocking acquire's group: owner/token
  if owned(who) or string.sub(who, 1, #owner + 1) == owner .. '/' then
    leave(waiter)
  end
end
wake(capacity)
return freed
