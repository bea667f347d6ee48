-- keyvault: spend from a key's cached credit balance in one atomic conditional step.
--
-- The balance is a cache of the durable store's: a hash per quota id holding
--   fp    the credits configuration it was loaded for (remaining:interval:amount)
--   bal   the live balance
--   rf    the start (unix seconds) of the refill interval the balance was loaded in ('' for
--         none yet)
--   p:<rf>  spent and not yet written back to the durable store, per refill interval
--   ld    when this balance was loaded (server time in µs): a lease's leftover goes back only
--         to the balance it was taken from
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
-- ARGV[9]  optionally, a lease: spend this much instead of the cost, at most a HEADROOM-th of
--          the balance; the cost alone when that is no more than the cost
--
-- Returns {status, balance, spent, ld}: status 1 spent, 0 insufficient, -1 miss (nothing
-- cached: load the balance from the durable store and call again with ARGV[7]), -2 stale
-- (cached for another configuration, or a new refill interval began: write back what is
-- pending, then load and call again); spent is what was taken (the cost, or the lease); ld
-- the balance's load stamp.
--
-- Refills are not applied here: the durable store keeps the refill each balance was set for
-- and applies it only for callers holding that one (an instance may hold a key's previous
-- configuration for up to a second after a change, and must not set the new balance to the
-- old refill's amount). A cached balance knows only its caller's configuration, so when a new
-- interval begins it is reloaded, once per interval, and the durable store decides.
--
-- Balances, costs and refill amounts are at most 2^53 − 1 (CONTRACT §3), so they are exact in
-- Lua's doubles; they go back to Redis through string.format('%.0f') because the default
-- conversion keeps only 14 digits. Pending amounts use HINCRBY (64-bit integers in Redis).

local function fmt(n)
  return string.format('%.0f', n)
end

-- A lease is at most this fraction of the balance: what a process that dies loses stays small
-- against it.
local HEADROOM = 32

local fp = redis.call('HGET', KEYS[1], 'fp')
local rf = redis.call('HGET', KEYS[1], 'rf') or ''
-- A new refill interval for a balance cached for this configuration: the durable store
-- decides whether it refills it. A load notes the interval it was read in, so this happens
-- once per interval.
local due = fp == ARGV[1] and ARGV[3] ~= '' and rf ~= '' and tonumber(rf) < tonumber(ARGV[4])
if fp ~= ARGV[1] or due then
  if ARGV[7] == '' then
    if fp then
      return { -2, 0, 0, 0 }
    end
    return { -1, 0, 0, 0 }
  end
  -- Lost (restart, FLUSHALL, expiry), loaded for another configuration (an instance that has
  -- not learnt of a change yet; a reset drops the cached balance), or a new interval: the
  -- durable balance, less what was spent here and not written back yet. Those pending amounts
  -- stay, to be written back.
  local pending = 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'p:' then
      pending = pending + tonumber(all[i + 1])
    end
  end
  rf = ARGV[4]
  local time = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'bal', fmt(math.max(tonumber(ARGV[7]) - pending, 0)),
    'rf', rf, 'ld', time[1] .. string.format('%06d', tonumber(time[2])))
end

local bal = tonumber(redis.call('HGET', KEYS[1], 'bal')) or 0
if ARGV[3] ~= '' and rf == '' then
  -- The first spend only notes the interval (as keyvault-core's reference store does).
  rf = ARGV[4]
  redis.call('HSET', KEYS[1], 'rf', rf)
end

local cost = tonumber(ARGV[2])
local status = 0
local spent = 0
if cost > 0 and ARGV[5] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then
  -- A retry of a spend already applied: spend nothing more.
  status = 1
elseif bal >= cost then
  status = 1
  if cost > 0 then
    spent = cost
    local lease = tonumber(ARGV[9] or '')
    if lease then
      lease = math.min(lease, math.floor(bal / HEADROOM))
      if lease > cost then
        spent = lease
      end
    end
    bal = bal - spent
    redis.call('HSET', KEYS[1], 'bal', fmt(bal))
    redis.call('HINCRBY', KEYS[1], 'p:' .. rf, fmt(spent))
    if ARGV[5] ~= '' then
      redis.call('SET', KEYS[2], fmt(spent), 'PX', ARGV[6])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return { status, bal, spent, tonumber(redis.call('HGET', KEYS[1], 'ld') or '0') or 0 }
