-- acquire.lua: grant `count` slots of a semaphore to `token`, or say how long to wait.
-- Runs after common.lua (key layout, now_ms, free_lease, expire_leases, the line, wake).
--
-- KEYS: holders, leases, info, fence, wake, queue, wants, due (see common.lua)
-- ARGV[1] token       unique per lease (client-generated; retrying with it is idempotent)
-- ARGV[2] owner       who holds it, e.g. "host:pid"; release_owner.lua matches on it
-- ARGV[3] task_id     free text shown by `taskpool slots`; "" for none
-- ARGV[4] count       slots wanted at once, 1 <= count
-- ARGV[5] capacity    slots in the semaphore (config; a smaller value evicts no one, it only
--                     refuses grants until the holders drop below it)
-- ARGV[6] ttl_ms      lease length
-- ARGV[7] waiter      the caller's name in the queue of waiters, or "" for a caller that
--                     does not wait in line (it still lets every queued waiter go first)
-- ARGV[8] arrival_ms  when the caller started waiting ("0": now, if it has no place yet);
--                     a waiter whose place was forgotten gets it back with this time
-- ARGV[9] queue_ttl_ms   how long a refused waiter's place lasts unless refreshed
-- ARGV[10] leave      "1": a grant ends the waiter's wait (it forgets its place); "0": the
--                     caller forgets it itself (a request that needs several semaphores keeps
--                     its places until it holds them all)
--
-- A grant needs count free slots beyond those wanted by the waiters queued before the caller.
-- Returns {1, {slot, ...}, fence, expires_at_ms} when granted: the lowest free slot indices,
--         the fencing token (increases with every grant) and the lease expiry (server ms).
--      or {0, retry_ms, free, arrival_ms}: retry_ms until the nearest lease expires (-1 when
--         none), free = slots free to this caller (free now, less those wanted by waiters
--         before it; fewer than count), arrival_ms = its place in the queue (0 without waiter).

local token, owner, task_id = ARGV[1], ARGV[2], ARGV[3]
local count, capacity, ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local waiter, arrival = ARGV[7], tonumber(ARGV[8]) or 0
local queue_ttl_ms, leave_on_grant = tonumber(ARGV[9]) or 0, ARGV[10] ~= '0'
local now = now_ms()
-- Slots freed by expired leases, or places of vanished waiters forgotten: the line may move.
local moved = expire_leases(now) > 0
moved = expire_waiters(now) or moved
if waiter ~= '' then
  arrival = arrival_of(waiter, arrival, now)
else
  arrival = nil -- out of line: after every queued waiter
end

-- After a grant: the keys' idle expiry, the caller out of line (unless it leaves itself), and a
-- wake-up for the next in line if slots remain.
local function granted()
  expire_when_idle()
  if waiter ~= '' and leave_on_grant then
    leave(waiter)
  end
  wake(capacity)
end

-- The same token again (a client retrying after a lost reply): extend and return the grant.
local raw = redis.call('HGET', INFO, token)
if raw then
  local info = cjson.decode(raw)
  local expires_at_ms = now + ttl_ms
  redis.call('ZADD', LEASES, expires_at_ms, token)
  granted()
  return {1, info.slots, info.fence, expires_at_ms}
end

local held = redis.call('HLEN', HOLDERS)
local room = capacity - held - count -- slots left after this grant, for the waiters before it
local ahead = 0
if room >= 0 then
  ahead = wanted_ahead(waiter, arrival, room)
end
if room < 0 or ahead > room then
  if moved then
    wake(capacity)
  end
  local nearest = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  local retry_ms = -1
  if nearest[2] then
    retry_ms = math.max(tonumber(nearest[2]) - now, 1)
  end
  local placed = 0
  if waiter ~= '' then
    join(waiter, count, arrival, queue_ttl_ms, now)
    placed = arrival
  end
  return {0, retry_ms, math.max(capacity - held - ahead, 0), string.format('%.0f', placed)}
end

-- held + count <= capacity, so [0, capacity) has at least `count` free indices.
local taken = {}
for _, field in ipairs(redis.call('HKEYS', HOLDERS)) do
  taken[tonumber(field)] = true
end
local slots = {}
for slot = 0, capacity - 1 do
  if not taken[slot] then
    slots[#slots + 1] = slot
    redis.call('HSET', HOLDERS, tostring(slot), token)
    if #slots == count then
      break
    end
  end
end

if redis.call('EXISTS', FENCE) == 0 then
  -- A new (or expired, see expire_when_idle) counter starts from the clock, in milliseconds:
  -- above every fence it gave before it expired, unless it averaged over one grant a millisecond
  -- (and small enough for cjson's 14 digits in the info record).
  redis.call('SET', FENCE, string.format('%.0f', now))
end
local fence = redis.call('INCR', FENCE)
local expires_at_ms = now + ttl_ms
redis.call('ZADD', LEASES, expires_at_ms, token)
redis.call('HSET', INFO, token, cjson.encode({
  slots = slots, owner = owner, task_id = task_id, since_ms = now, fence = fence,
}))
granted()
return {1, slots, fence, expires_at_ms}
