-- keyvault: hand the spends not yet written back to the durable store over to the writer.
-- See credits_spend.lua for the balance hash.
--
-- KEYS[1]  the balance hash
-- ARGV[1]  'claim': take every pending amount (the writer debits the durable store);
--          'drop': the same, and forget the cached balance (it is reloaded on the next spend);
--          'restore': put amounts back after the durable store failed
-- ARGV[2]  with 'restore': the fp the amounts were claimed under
-- ARGV[3], ARGV[4], ...  with 'restore': field, amount pairs
--
-- Returns {fp, field, amount, field, amount, ...} for 'claim' and 'drop' ({} when nothing is
-- cached); {} for 'restore'.

local mode = ARGV[1]
if mode == 'restore' then
  if redis.call('HGET', KEYS[1], 'fp') == ARGV[2] then
    for i = 3, #ARGV, 2 do
      redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
    end
  end
  return {}
end

local all = redis.call('HGETALL', KEYS[1])
local reply = {}
local fields = {}
for i = 1, #all, 2 do
  if all[i] == 'fp' then
    reply[1] = all[i + 1]
  elseif string.sub(all[i], 1, 2) == 'p:' then
    fields[#fields + 1] = all[i]
    fields[#fields + 1] = all[i + 1]
  end
end
if not reply[1] then
  return {}
end
for i = 1, #fields, 2 do
  if fields[i + 1] ~= '0' then
    reply[#reply + 1] = fields[i]
    reply[#reply + 1] = fields[i + 1]
  end
  redis.call('HDEL', KEYS[1], fields[i])
end
if mode == 'drop' then
  redis.call('DEL', KEYS[1])
end
return reply
