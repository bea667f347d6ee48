-- keyvault: spend from a key's cached credit balance in one atomic conditional step.
--
-- The balance is a cache of the durable store's: a hash per quota id holding
--   fp    the credits configuration it was loaded for (remaining:interval:amount)
--   bal   the live balance
--   rf    the start (unix seconds) of the refill interval last applied ('' for none yet)
--   p:<rf>  spent and not yet written back to the durable store, per refill interval
--
-- KEYS[1]  the balance hash
-- KEYS[2]  the request's idempotency record
-- ARGV[1]  fp of the caller's configuration
-- ARGV[2]  cost
-- ARGV[3]  refill amount ('' for no refill)
-- ARGV[4]  start of the refill interval holding the request's time ('' for no refill)
-- ARGV[5]  request id ('' for none)
-- ARGV[6]  how long the idempotency record lives, in ms
-- ARGV[7]  the durable balance to load on a miss ('' to report the miss instead)
-- ARGV[8]  how long an idle balance stays cached, in ms
--
-- Returns {status, balance}: status 1 spent, 0 insufficient, -1 miss (nothing cached for this
-- configuration; load it from the durable store and call again with ARGV[7]).
--
-- Balances, costs and refill amounts are at most 2^53 − 1 (CONTRACT §3), so they are exact in
-- Lua's doubles; they go back to Redis through string.format('%.0f') because the default
-- conversion keeps only 14 digits. Pending amounts use HINCRBY (64-bit integers in Redis).

local function fmt(n)
  return string.format('%.0f', n)
end

local fp = redis.call('HGET', KEYS[1], 'fp')
if fp ~= ARGV[1] then
  if ARGV[7] == '' then
    return { -1, 0 }
  end
  -- Lost (restart, FLUSHALL, expiry) or loaded for another configuration: a changed
  -- configuration means the durable balance was reset, which supersedes spends of the old one
  -- not yet written back.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'bal', ARGV[7], 'rf', ARGV[4])
end

local bal = tonumber(redis.call('HGET', KEYS[1], 'bal')) or 0
local rf = redis.call('HGET', KEYS[1], 'rf') or ''
if ARGV[3] ~= '' then
  -- The refill *sets* the balance once per interval; the first spend only notes the interval
  -- (as keyvault-core's reference store does).
  if rf == '' then
    rf = ARGV[4]
    redis.call('HSET', KEYS[1], 'rf', rf)
  elseif tonumber(rf) < tonumber(ARGV[4]) then
    rf = ARGV[4]
    bal = tonumber(ARGV[3])
    redis.call('HSET', KEYS[1], 'rf', rf, 'bal', fmt(bal))
  end
end

local cost = tonumber(ARGV[2])
local status = 0
if cost > 0 and ARGV[5] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  -- A retry of a spend already applied: spend nothing more.
  status = 1
elseif bal >= cost then
  status = 1
  if cost > 0 then
    bal = bal - cost
    redis.call('HSET', KEYS[1], 'bal', fmt(bal))
    redis.call('HINCRBY', KEYS[1], 'p:' .. rf, ARGV[2])
    if ARGV[5] ~= '' then
      redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[6])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return { status, bal }
