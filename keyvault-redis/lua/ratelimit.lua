-- keyvault: check every named rate limit of one key, and take a token from each only when all
-- of them admit (CONTRACT §3). GCRA exactly as keyvault-core/src/gcra.rs defines it, with time
-- from this server's TIME (never an instance's clock) in microseconds.
--
-- One call may carry several requests for the same key and limits (concurrent checks that the
-- client coalesced): they are applied strictly in order, each seeing the buckets as the ones
-- before it left them, exactly as if each had been its own call at the same instant.
--
-- KEYS[1]      the first request's idempotency record (written only when a token is taken)
-- KEYS[1 + i]  the bucket of limit i (one key per quota id + name + limit + period, so that a
--              changed limit starts full), i = 1..n
-- KEYS[1 + n + j]  the idempotency record of request 1 + j, j = 1..k
-- ARGV[1]      how many tokens the request wants: 0 a pure check, 1 one token from each limit
--              when all admit, w > 1 a lease (at most 2^20): w tokens from each limit when
--              every limit holds at least HEADROOM · w, fewer when they hold less, and one
--              token alone when they hold less than HEADROOM · 2 (near exhaustion every token
--              goes through here one at a time)
-- ARGV[2]      the request id ('' for none)
-- ARGV[3]      how long the idempotency record lives, in ms
-- ARGV[2 + 2i], ARGV[3 + 2i]   limit i's size L and period in ms
-- ARGV[1 + 2n + 3j .. 3 + 2n + 3j]   request 1 + j's take flag, request id and record lifetime
-- (so k = #ARGV − 2·#KEYS − 1; a single request is the layout with k = 0)
-- ARGV[#ARGV]  optionally '@<now in µs>': the time to use instead of TIME, for tests that move
--              time themselves (no real argument starts with '@'); buckets then get no expiry,
--              since the server's time does not pass with that clock
--
-- Returns, per request in order: {admitted, now_us, then per limit: remaining, reset_in_us,
-- retry_in_us or -1}, where admitted is 0 when refused and otherwise the tokens taken from
-- each limit (1 for a single token or a pure check, more for a lease).
--
-- Exactness with Lua's doubles (exact integers only below 2^53):
-- gcra.rs keeps the scaled TAT x = tat·L so that a token adds exactly the period P and no
-- rounding accumulates. Here x·L would reach ~10^24, so a bucket stores the same value split
-- into a whole part and a remainder: tat = q + r/L microseconds with 0 <= r < L. One token is
-- T = P/L = t + s/L with t = floor(P/L), s = P mod L, so adding or removing a token is an
-- addition with carry: every stored number stays below 2^53 (q ~ 1.8e15 until 2255, r < 2^30).
-- The only product that could exceed 2^53 is the token count floor((d·L − r)/P) with d <= P
-- (up to 3.2e13·1e9); muldiv computes it by long multiplication in 6-bit digits of L, whose
-- partial values stay below 2^52. Values go back to Redis through string.format('%.0f'),
-- because Lua's default number-to-string conversion keeps only 14 digits.

local function fmt(n)
  return string.format('%.0f', n)
end

-- A lease leaves every limit at least this many leases' worth of tokens.
local HEADROOM = 4
local MAX_LEASE = 1048576

-- floor((a·b − c) / m) for 0 <= a <= m < 2^45, 0 <= b < 2^30, 0 <= c < m.
local function muldiv(a, b, c, m)
  local digits = {}
  local rest = b
  for i = 5, 1, -1 do
    digits[i] = rest % 64
    rest = (rest - digits[i]) / 64
  end
  local q, r = 0, 0
  for i = 1, 5 do
    local y = r * 64 + a * digits[i]
    local d = math.floor(y / m)
    local rem = y - d * m
    -- Division of doubles is correctly rounded, but guard the floor anyway.
    if rem < 0 then
      d = d - 1
      rem = rem + m
    elseif rem >= m then
      d = d + 1
      rem = rem - m
    end
    q = q * 64 + d
    r = rem
  end
  if r < c then
    q = q - 1
  end
  return q
end

local argc = #ARGV
local now
local fixed = argc > 0 and string.sub(ARGV[argc], 1, 1) == '@'
if fixed then
  now = tonumber(string.sub(ARGV[argc], 2))
  argc = argc - 1
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local k = argc - 2 * #KEYS - 1
local n = #KEYS - 1 - k
if k < 0 or n < 0 then
  return redis.error_reply('ERR keyvault ratelimit: wrong number of keys or arguments')
end

-- Each bucket is read once and written once per call; the requests in between work on the
-- values held here.
local buckets = {}
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local period = tonumber(ARGV[3 + 2 * i]) * 1000
  local t, s = interval(period, limit)
  -- An absent or unreadable bucket is full: its tat is at most now.
  local q, r = 0, 0
  local stored = redis.call('GET', KEYS[1 + i])
  if stored then
    local sq, sr = string.match(stored, '^(%d+):(%d+)$')
    sq, sr = tonumber(sq), tonumber(sr)
    if sq and sr then
      q, r = sq, sr
    end
  end
  buckets[i] = { limit = limit, period = period, t = t, s = s, q = q, r = r, dirty = false }
end

local reply = {}

local function apply(record, want, request_id, record_ms)
  want = math.min(math.floor(tonumber(want) or 0), MAX_LEASE)
  local take = want >= 1
  -- A retry of a request that already took its tokens takes nothing more and stays admitted.
  local replay = false
  if take and request_id ~= '' then
    local prev = redis.call('GET', record)
    if prev == 'T' then
      replay = true
      take = false
    elseif prev then
      take = false
    end
  end

  local base = {}
  local admitted = true
  local fewest = nil
  for i = 1, n do
    local b = buckets[i]
    -- base = max(tat, now): a bucket idle long enough is full.
    local q, r = now, 0
    if b.q > now or (b.q == now and b.r > 0) then
      q, r = b.q, b.r
    end
    local available
    if q == now and r == 0 then
      available = b.limit
    else
      local d = now + b.period - q
      if d < 0 then
        -- The server's clock went back past the bucket's horizon: nothing is available.
        available = 0
      else
        available = math.max(0, muldiv(d, b.limit, r, b.period))
      end
    end
    if available < 1 then
      admitted = false
    end
    if fewest == nil or available < fewest then
      fewest = available
    end
    base[i] = { q = q, r = r, available = available }
  end

  if replay then
    admitted = true
  end
  local commit = admitted and take
  -- Tokens taken from each limit: one, or a lease far from exhaustion.
  local count = 1
  if commit and want > 1 then
    local lease = math.min(want, math.floor(fewest / HEADROOM))
    if lease >= 2 then
      count = lease
    end
  end

  reply[#reply + 1] = admitted and (commit and count or 1) or 0
  reply[#reply + 1] = now
  for i = 1, n do
    local b = buckets[i]
    local q, r, remaining = base[i].q, base[i].r, base[i].available
    if commit then
      local dq, dr = times(count, b.t, b.s, b.limit)
      q = q + dq
      r = r + dr
      if r >= b.limit then
        q = q + 1
        r = r - b.limit
      end
      remaining = remaining - count
      b.q, b.r, b.dirty = q, r, true
    end
    -- Full again at tat: ceil(tat − now).
    local reset_in = q - now
    if r > 0 then
      reset_in = reset_in + 1
    end
    local retry_in = -1
    if remaining == 0 then
      -- The next token arrives at tat + T − P (gcra.rs: (x + P − P·L) / L, rounded up).
      local nq, nr = q + b.t, r + b.s
      if nr >= b.limit then
        nq = nq + 1
        nr = nr - b.limit
      end
      local needed = nq - b.period
      if nr > 0 then
        needed = needed + 1
      end
      retry_in = math.max(needed - now, 1)
    end
    reply[#reply + 1] = remaining
    reply[#reply + 1] = reset_in
    reply[#reply + 1] = retry_in
  end

  if commit and request_id ~= '' then
    redis.call('SET', record, 'T', 'PX', record_ms)
  end
end

apply(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
for j = 1, k do
  local a = 1 + 2 * n + 3 * j
  apply(KEYS[1 + n + j], ARGV[a], ARGV[a + 1], ARGV[a + 2])
end

for i = 1, n do
  local b = buckets[i]
  if b.dirty then
    -- The bucket can vanish once it is full again: an absent bucket reads as full.
    local reset_in = b.q - now
    if b.r > 0 then
      reset_in = reset_in + 1
    end
    if fixed then
      redis.call('SET', KEYS[1 + i], fmt(b.q) .. ':' .. fmt(b.r))
    else
      redis.call('SET', KEYS[1 + i], fmt(b.q) .. ':' .. fmt(b.r), 'PX', fmt(math.floor(reset_in / 1000) + 2))
    end
  end
end
return reply
