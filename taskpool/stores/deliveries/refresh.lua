-- refresh.lua: vouch for the deliveries this worker still holds (its liveness lease).
--
-- KEYS[1] unacked_index  kombu's sorted set: delivery tag -> time it was last vouched for
-- KEYS[2] owners         taskpool's hash: delivery tag -> the worker holding it
-- ARGV[1] owner          this worker
-- ARGV[2] now            seconds since the epoch (kombu's scores are the client's time())
-- ARGV[3..] tags         the deliveries this worker holds unacknowledged
--
-- Each tag still this worker's gets the score `now`, so neither taskpool's sweep (claim.lua)
-- nor kombu's visibility-timeout sweep takes it while the worker lives.
--
-- Returns a flat list tag1, holder1, tag2, holder2, ... of the tags that are not this
-- worker's any more: holder is the worker that holds it now, or '' (acked, or restored).
local owner, now = ARGV[1], ARGV[2]
local gone = {}
for i = 3, #ARGV do
  local tag = ARGV[i]
  local current = redis.call('HGET', KEYS[2], tag)
  if current == owner and redis.call('ZSCORE', KEYS[1], tag) then
    redis.call('ZADD', KEYS[1], 'XX', now, tag)
  else
    gone[#gone + 1] = tag
    gone[#gone + 1] = current or ''
  end
end
return gone
