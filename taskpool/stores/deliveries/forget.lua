-- forget.lua: drop the owner of a delivery that is no longer in the unacked hash (kombu
-- restored it: its next delivery records its own owner).
--
-- KEYS[1] unacked   kombu's hash
-- KEYS[2] owners    taskpool's hash
-- ARGV[1] tag
--
-- Returns 1 when the owner entry was dropped, else 0.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
