-- common.lua: helpers shared by every semaphore script (acquire, renew, release, release_owner,
-- reap, queue). semaphore.py prepends this file to each of them, so they free slots one way.
--
-- Key layout of one semaphore NAME (every key shares the hash tag {NAME}, so Cluster-safe):
--   KEYS[1] <ks>:sem:{NAME}:holders  hash    slot index ("0".."capacity-1") -> token
--   KEYS[2] <ks>:sem:{NAME}:leases   zset    token -> expires_at_ms (Redis TIME, ms since epoch)
--   KEYS[3] <ks>:sem:{NAME}:info     hash    token -> JSON {slots, owner, task_id, since_ms, fence}
--   KEYS[4] <ks>:sem:{NAME}:fence    string  counter, INCR once per grant (the fencing token)
--   KEYS[5] <ks>:sem:{NAME}:wake     prefix  <wake>:<group> is a list of at most one element,
--                                            pushed when a waiter of that group may be granted
--   KEYS[6] <ks>:sem:{NAME}:queue    zset    waiter -> arrival_ms: who waits, in arrival order
--   KEYS[7] <ks>:sem:{NAME}:wants    hash    waiter -> slots it waits for
--   KEYS[8] <ks>:sem:{NAME}:due      zset    waiter -> ms after which its place is forgotten
-- Free slots are derived from holders, never stored. A lease whose expires_at_ms <= now is lost,
-- whether or not a script has reaped it yet.

local HOLDERS, LEASES, INFO, FENCE, WAKE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local QUEUE, WANTS, DUE = KEYS[6], KEYS[7], KEYS[8]
local WAKE_TTL_MS = 60000 -- a wake element nobody took disappears after a minute

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

-- Forgets `waiter`'s place; 1 if it had one, else 0.
local function leave(waiter)
  redis.call('HDEL', WANTS, waiter)
  redis.call('ZREM', DUE, waiter)
  return redis.call('ZREM', QUEUE, waiter)
end

-- Forgets the places of waiters whose worker stopped refreshing them; true if there were any.
local function expire_waiters(now)
  local gone = redis.call('ZRANGEBYSCORE', DUE, '-inf', now)
  for _, waiter in ipairs(gone) do
    leave(waiter)
  end
  return #gone > 0
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
-- arrival and a smaller name (the order of the sorted set). arrival nil: every waiter. Reads at
-- most room + 1 waiters (each wants one slot at least): the answer is exact up to room, and
-- above room once it exceeds it, which is all a grant needs to know.
local function wanted_ahead(waiter, arrival, room)
  local ahead = 0
  local upto = '+inf'
  if arrival then
    upto = string.format('%.0f', arrival)
  end
  local queued = redis.call('ZRANGEBYSCORE', QUEUE, '-inf', upto, 'WITHSCORES', 'LIMIT', 0, room + 1)
  for i = 1, #queued, 2 do
    local other = queued[i]
    if other == waiter or ahead > room then
      break
    end
    if not arrival or tonumber(queued[i + 1]) < arrival or other < waiter then
      ahead = ahead + (tonumber(redis.call('HGET', WANTS, other)) or 0)
    end
  end
  return ahead
end

-- The line's keys live at least ttl_ms more (its last waiter's place lapses by then).
local function keep_line(ttl_ms)
  for _, key in ipairs({QUEUE, WANTS, DUE}) do
    if redis.call('PTTL', key) < ttl_ms then
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end

-- Queues `waiter` (or keeps its place) wanting `count` slots until now + ttl_ms.
local function join(waiter, count, arrival, ttl_ms, now)
  redis.call('ZADD', QUEUE, 'NX', string.format('%.0f', arrival), waiter)
  redis.call('HSET', WANTS, waiter, count)
  redis.call('ZADD', DUE, string.format('%.0f', now + ttl_ms), waiter)
  keep_line(ttl_ms)
end

-- Wakes the waiters at the front of the line whose slots are free now (every waiter wants at
-- least one slot, so at most `free` of them): one element on the wake list of each one's group,
-- the part of its name before "|" (a worker: "host:pid"), or its whole name. A list holds one
-- element at most: it means "try again", and a stale one costs one attempt. Waking only those
-- who can be granted keeps a wake-up from going to a waiter that must let it pass.
local function wake(capacity)
  local free = capacity - redis.call('HLEN', HOLDERS)
  if free <= 0 then
    return
  end
  for _, waiter in ipairs(redis.call('ZRANGE', QUEUE, 0, math.min(free, 1000) - 1)) do
    local wants = tonumber(redis.call('HGET', WANTS, waiter)) or 1
    if wants > free then
      return
    end
    free = free - wants
    local key = WAKE .. ':' .. (string.match(waiter, '^(.-)|') or waiter)
    redis.call('LPUSH', key, '1')
    redis.call('LTRIM', key, 0, 0)
    redis.call('PEXPIRE', key, WAKE_TTL_MS)
  end
end
