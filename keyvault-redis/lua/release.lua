-- keyvault: give back the tokens an admitted check took (the request was rejected later on),
-- once per request id. Same buckets, units and exactness rules as ratelimit.lua.
--
-- KEYS[1]      the request's idempotency record
-- KEYS[1 + i]  the bucket of limit i
-- ARGV[1]      the request id ('' for none: give back unconditionally)
-- ARGV[2]      how long the idempotency record lives, in ms
-- ARGV[3]      how many tokens to give back to each limit: 1 for a check, the unused part of
--              a lease when it ends (at most 2^20)
-- ARGV[2 + 2i], ARGV[3 + 2i]   limit i's size L and period in ms
-- ARGV[#ARGV]  optionally '@<now in µs>', as in ratelimit.lua
--
-- Returns 1 when tokens were given back, 0 when this request had none to give back.

local function fmt(n)
  return string.format('%.0f', n)
end

if ARGV[1] ~= '' then
  if redis.call('GET', KEYS[1]) ~= 'T' then
    return 0
  end
  redis.call('SET', KEYS[1], 'R', 'PX', ARGV[2])
end

local now
local fixed = string.sub(ARGV[#ARGV], 1, 1) == '@'
if fixed then
  now = tonumber(string.sub(ARGV[#ARGV], 2))
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local count = math.min(math.max(math.floor(tonumber(ARGV[3]) or 1), 0), 1048576)
for i = 1, #KEYS - 1 do
  local stored = redis.call('GET', KEYS[1 + i])
  if stored then
    local limit = tonumber(ARGV[2 + 2 * i])
    local period = tonumber(ARGV[3 + 2 * i]) * 1000
    local t, s = interval(period, limit)
    local q, r = string.match(stored, '^(%d+):(%d+)$')
    q, r = tonumber(q), tonumber(r)
    if q and r then
      local dq, dr = times(count, t, s, limit)
      q = q - dq
      r = r - dr
      if r < 0 then
        q = q - 1
        r = r + limit
      end
      -- Never below "full now": a refund can't create tokens beyond the bucket's size.
      if q < now or (q == now and r == 0) then
        redis.call('DEL', KEYS[1 + i])
      else
        local reset_in = q - now
        if r > 0 then
          reset_in = reset_in + 1
        end
        if fixed then
          redis.call('SET', KEYS[1 + i], fmt(q) .. ':' .. fmt(r))
        else
          redis.call('SET', KEYS[1 + i], fmt(q) .. ':' .. fmt(r), 'PX', fmt(math.floor(reset_in / 1000) + 2))
        end
      end
    end
  end
end
return 1
