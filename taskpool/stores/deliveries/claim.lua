-- claim.lua: take over the deliveries of workers that stopped vouching for them.
--
-- KEYS[1] unacked        kombu's hash: delivery tag -> [message, exchange, routing key]
-- KEYS[2] unacked_index  kombu's sorted set: delivery tag -> time it was last vouched for
-- KEYS[3] owners         taskpool's hash: delivery tag -> the worker holding it
-- ARGV[1] claimer        this worker
-- ARGV[2] now            seconds since the epoch
-- ARGV[3] cutoff         now - lease ttl: a score below it was not vouched for in a whole ttl
-- ARGV[4] limit          claim at most this many
--
-- A stale tag with an owner (a taskpool worker that died) becomes the claimer's, vouched for
-- now, so no other sweep takes it; the claimer then restores it (kombu's restore_by_tag, a
-- WATCH transaction that pushes the message only if it is still in the unacked hash: exactly
-- once). If the claimer dies first, the tag goes stale again and the next sweep takes it.
-- Stale tags without an owner are plain Celery's: left to kombu's visibility timeout.
--
-- Returns a flat list tag1, previous owner1, ... oldest first.
local claimer, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[4])
local claimed = {}
local stale = redis.call('ZRANGE', KEYS[2], '-inf', '(' .. ARGV[3], 'BYSCORE')
for _, tag in ipairs(stale) do
  if #claimed >= 2 * limit then
    break
  end
  local owner = redis.call('HGET', KEYS[3], tag)
  if owner then
    if redis.call('HEXISTS', KEYS[1], tag) == 1 then
      redis.call('HSET', KEYS[3], tag, claimer)
      redis.call('ZADD', KEYS[2], 'XX', now, tag)
      claimed[#claimed + 1] = tag
      claimed[#claimed + 1] = owner
    else
      -- acked between kombu's two writes, or a half-done restore: nothing to deliver again
      redis.call('HDEL', KEYS[3], tag)
      redis.call('ZREM', KEYS[2], tag)
    end
  end
end
return claimed
