-- keyvault: give back a spend (the request was rejected or failed later on), once per request
-- id. See credits_spend.lua for the balance hash.
--
-- KEYS[1]  the balance hash
-- KEYS[2]  the request's idempotency record
-- ARGV[1]  fp of the caller's configuration
-- ARGV[2]  cost ('' with a request id: the amount that request spent)
-- ARGV[3]  request id ('' for none: give back unconditionally)
-- ARGV[4]  how long the idempotency record lives, in ms
-- ARGV[5]  optionally, the load stamp of the balance a lease was taken from: its leftover goes
--          back only to that balance (never to a reloaded or reset one, nor to the durable
--          store)
--
-- Returns {status, amount}: 1 given back here; 0 nothing to give back (no such spend, already
-- given back, or superseded by a reset); 2 the balance is no longer cached: give `amount` back
-- to the durable store instead.

local function fmt(n)
  return string.format('%.0f', n)
end

local cost = tonumber(ARGV[2]) or 0
if ARGV[3] ~= '' then
  local spent = redis.call('GET', KEYS[2])
  if not spent or spent == 'R' then
    return { 0, 0 }
  end
  cost = tonumber(spent)
  redis.call('SET', KEYS[2], 'R', 'PX', ARGV[4])
end
if cost <= 0 then
  return { 0, 0 }
end

local fp = redis.call('HGET', KEYS[1], 'fp')
local lease = ARGV[5] or ''
if lease ~= '' and (not fp or redis.call('HGET', KEYS[1], 'ld') ~= lease) then
  return { 0, 0 }
end
if not fp then
  return { 2, cost }
end
if fp ~= ARGV[1] then
  return { 0, 0 }
end
local bal = math.min((tonumber(redis.call('HGET', KEYS[1], 'bal')) or 0) + cost, 9007199254740991)
local rf = redis.call('HGET', KEYS[1], 'rf') or ''
redis.call('HSET', KEYS[1], 'bal', fmt(bal))
-- A negative pending amount is written back as a refund.
redis.call('HINCRBY', KEYS[1], 'p:' .. rf, fmt(-cost))
return { 1, cost }
