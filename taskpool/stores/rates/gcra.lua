-- GCRA (generic cell rate algorithm) over several rates at once: every token or none.
-- Key layout (one key per rate, see taskpool.core.names.rate_key); on Redis Cluster the caller
-- passes the keys of one slot per call (taskpool.stores.rates.Rates):
--   KEYS[i] <ks>:rate:{NAME}   string   TAT, the rate's "theoretical arrival time" in microseconds
--                                       since the epoch (Redis TIME); expires once it is in the past
-- ARGV[1]      "take" or "refund"
-- ARGV[1+i]    interval_us of KEYS[i]: microseconds between two tokens (no burst: tau = 0)
-- take:   a request conforms to rate i when TAT_i <= now. If every rate conforms, each TAT becomes
--         max(TAT, now) + interval and the script returns {1, now_us}; else nothing changes and it
--         returns {0, wait_us, i}: microseconds until the first refused rate (index i) conforms.
-- refund: gives back one token of each rate (TAT - interval), after a take whose request could
--         not get its semaphores. Returns {1, now_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local function store(key, tat)
  local ttl_ms = math.ceil((tat - now) / 1000)
  if ttl_ms > 0 then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl_ms)
  else
    redis.call('DEL', key)
  end
end
if mode == 'refund' then
  for i, key in ipairs(KEYS) do
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    if tat > 0 then store(key, tat - tonumber(ARGV[1 + i])) end
  end
  return {1, now}
end
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat > now then
    return {0, tat - now, i}
  end
  tats[i] = now
end
for i, key in ipairs(KEYS) do
  store(key, tats[i] + tonumber(ARGV[1 + i]))
end
return {1, now}
