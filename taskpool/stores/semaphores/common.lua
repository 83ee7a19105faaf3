-- common.lua: helpers shared by acquire.lua, renew.lua, release.lua and release_owner.lua.
-- semaphore.py prepends this file to each of them, so the four scripts free slots one way.
--
-- Key layout of one semaphore NAME (every key shares the hash tag {NAME}, so Cluster-safe):
--   KEYS[1] <ks>:sem:{NAME}:holders  hash    slot index ("0".."capacity-1") -> token
--   KEYS[2] <ks>:sem:{NAME}:leases   zset    token -> expires_at_ms (Redis TIME, ms since epoch)
--   KEYS[3] <ks>:sem:{NAME}:info     hash    token -> JSON {slots, owner, task_id, since_ms, fence}
--   KEYS[4] <ks>:sem:{NAME}:fence    string  counter, INCR once per grant (the fencing token)
--   KEYS[5] <ks>:sem:{NAME}:wake     list    about one element per free slot; waiters BLPOP it
--   KEYS[6] <ks>:sem:{NAME}:queue    zset    waiter -> arrival_ms: who waits, in arrival order
--   KEYS[7] <ks>:sem:{NAME}:wants    hash    waiter -> slots it waits for
--   KEYS[8] <ks>:sem:{NAME}:due      zset    waiter -> ms after which its place is forgotten
-- Free slots are derived from holders, never stored. A lease whose expires_at_ms <= now is lost,
-- whether or not a script has reaped it yet.

local HOLDERS, LEASES, INFO, FENCE, WAKE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local QUEUE, WANTS, DUE = KEYS[6], KEYS[7], KEYS[8]
local WAKE_TTL_MS = 60000 -- an idle semaphore's stale wake elements disappear after a minute

-- Redis server time in ms (scripts are replicated by effects, so TIME is allowed).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Frees every slot `token` holds and forgets its lease. Returns the number of slots freed.
local function free_lease(token)
  redis.call('ZREM', LEASES, token)
  local raw = redis.call('HGET', INFO, token)
  if not raw then
    return 0
  end
  redis.call('HDEL', INFO, token)
  local freed = 0
  for _, slot in ipairs(cjson.decode(raw).slots) do
    local field = tostring(slot)
    if redis.call('HGET', HOLDERS, field) == token then
      redis.call('HDEL', HOLDERS, field)
      freed = freed + 1
    end
  end
  return freed
end

-- Reaps every lease that expired at or before `now`. Returns the number of slots freed.
local function expire_leases(now)
  local freed = 0
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do
    freed = freed + free_lease(token)
  end
  return freed
end

-- Pushes one wake element per freed slot, then keeps the list no longer than the number of
-- free slots: an element stands for "a slot may be free", and a stale one only costs a waiter
-- one extra attempt.
local function wake(freed, capacity)
  for _ = 1, freed do
    redis.call('LPUSH', WAKE, '1')
  end
  local free = capacity - redis.call('HLEN', HOLDERS)
  if free <= 0 then
    redis.call('DEL', WAKE)
    return
  end
  redis.call('LTRIM', WAKE, 0, free - 1)
  if freed > 0 then
    redis.call('PEXPIRE', WAKE, WAKE_TTL_MS)
  end
end

-- A semaphore costs nothing once idle: its keys expire IDLE_MS after its last lease does (a
-- keyed limit makes one semaphore per key). Call after a grant or a renewal. The fence counter
-- expires with them; acquire.lua starts a new one from the clock, so fences keep increasing.
local IDLE_MS = 60000
local function expire_when_idle()
  local last = redis.call('ZRANGE', LEASES, -1, -1, 'WITHSCORES')
  if last[2] then
    local at = tonumber(last[2]) + IDLE_MS
    for _, key in ipairs({HOLDERS, LEASES, INFO, FENCE}) do
      redis.call('PEXPIREAT', key, at)
    end
  end
end

-- Waiters (fairness). A waiter is a name ("owner|delivery"), queued with its arrival time (one
-- time per request, the same in every semaphore it waits for) and the slots it wants. A grant
-- leaves the slots wanted by the waiters queued before the caller to them, so a waiter that
-- wants several slots is not passed by smaller ones that came later, on any worker, and the
-- oldest request of all is first in line everywhere it waits (no two requests can block each
-- other). A waiter's place lasts until its due time; its worker refreshes it while it waits.

-- Forgets `waiter`'s place.
local function leave(waiter)
  redis.call('ZREM', QUEUE, waiter)
  redis.call('HDEL', WANTS, waiter)
  redis.call('ZREM', DUE, waiter)
end

-- Forgets the places of waiters whose worker stopped refreshing them.
local function expire_waiters(now)
  for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', now)) do
    leave(waiter)
  end
end

-- The place in line of `waiter`: the one it has, else `arrival` (a request that waits in other
-- semaphores already), else now, after every waiter queued so far (two newcomers within one
-- millisecond must not be ordered by name: the later one would pass the earlier one).
local function arrival_of(waiter, arrival, now)
  local placed = redis.call('ZSCORE', QUEUE, waiter)
  if placed then
    return tonumber(placed)
  end
  if arrival > 0 then
    return arrival
  end
  local last = redis.call('ZRANGE', QUEUE, -1, -1, 'WITHSCORES')
  if last[2] then
    return math.max(now, tonumber(last[2]) + 1)
  end
  return now
end

-- Slots wanted by the waiters queued before (arrival, waiter): lower arrival, or the same
-- arrival and a smaller name (the order of the sorted set). arrival nil: every waiter.
local function wanted_ahead(waiter, arrival)
  local ahead = 0
  local upto = '+inf'
  if arrival then
    upto = string.format('%.0f', arrival)
  end
  local queued = redis.call('ZRANGEBYSCORE', QUEUE, '-inf', upto, 'WITHSCORES')
  for i = 1, #queued, 2 do
    local other = queued[i]
    if other == waiter then
      break
    end
    if not arrival or tonumber(queued[i + 1]) < arrival or other < waiter then
      ahead = ahead + (tonumber(redis.call('HGET', WANTS, other)) or 0)
    end
  end
  return ahead
end

-- Queues `waiter` (or keeps its place) wanting `count` slots until now + ttl_ms.
local function join(waiter, count, arrival, ttl_ms, now)
  redis.call('ZADD', QUEUE, 'NX', string.format('%.0f', arrival), waiter)
  redis.call('HSET', WANTS, waiter, count)
  redis.call('ZADD', DUE, string.format('%.0f', now + ttl_ms), waiter)
  for _, key in ipairs({QUEUE, WANTS, DUE}) do
    if redis.call('PTTL', key) < ttl_ms then
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end
