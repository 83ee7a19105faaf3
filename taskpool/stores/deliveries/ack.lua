-- ack.lua: forget a delivery this worker made, unless it is no longer this worker's.
--
-- KEYS[1] unacked        kombu's hash: delivery tag -> [message, exchange, routing key]
-- KEYS[2] unacked_index  kombu's sorted set: delivery tag -> time it was last vouched for
-- KEYS[3] owners         taskpool's hash: delivery tag -> the worker holding it
-- ARGV[1] tag
-- ARGV[2] owner          this worker
--
-- A restored message keeps its delivery tag (kombu sets it at publish), so the tag may now be
-- another worker's delivery of the same message: then nothing is removed (kombu's own ack
-- would drop that delivery, and a death of its worker would lose it).
--
-- Returns 1 when removed (or owned by nobody: plain kombu semantics), 0 when another worker
-- holds it.
local tag, owner = ARGV[1], ARGV[2]
local current = redis.call('HGET', KEYS[3], tag)
if current and current ~= owner then
  return 0
end
redis.call('HDEL', KEYS[3], tag)
redis.call('ZREM', KEYS[2], tag)
redis.call('HDEL', KEYS[1], tag)
return 1
