-- keyvault: the token arithmetic of ratelimit.lua and release.lua, prepended to both (one
-- script each, so each is still one EVALSHA). Times are whole µs plus a remainder in 1/L µs,
-- as the buckets store them; see ratelimit.lua for why every number stays exact.

-- A limit's emission interval T = P / L (P in µs) as t + s / L, with 0 <= s < L.
local function interval(period, limit)
  local t = math.floor(period / limit)
  local s = period - t * limit
  if s < 0 then
    t = t - 1
    s = s + limit
  elseif s >= limit then
    t = t + 1
    s = s - limit
  end
  return t, s
end

-- count · T as whole + rest / L, with 0 <= rest < L: count·t + count·s / L, with
-- count·s < 2^50, exact in doubles.
local function times(count, t, s, limit)
  local whole = math.floor(count * s / limit)
  local rest = count * s - whole * limit
  if rest < 0 then
    whole = whole - 1
    rest = rest + limit
  elseif rest >= limit then
    whole = whole + 1
    rest = rest - limit
  end
  return count * t + whole, rest
end

