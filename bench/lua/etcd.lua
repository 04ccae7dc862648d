-- etcd's JSON gateway (v3), the same operations as ringstore's scenarios: ETCD_OP=get (a
-- linearizable range of one preloaded key), put (a plain put of a preloaded key), create (a
-- txn putting a new key only if it does not exist: POST's create-if-absent). Keys and values
-- are base64, as the gateway wants them.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local op = os.getenv("ETCD_OP") or "get"
local run = os.getenv("BENCH_RUN") or "0"
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return alphabet:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local function user(id, group)
  return string.format('{"id":"%s","name":"Bench User","email":"bench@example.com","group":%d}',
    id, group)
end

request = function()
  local headers = {["Content-Type"] = "application/json"}
  if op == "get" then
    local key = b64("u" .. math.random(0, users - 1))
    return wrk.format("POST", "/v3/kv/range", headers, string.format('{"key":"%s"}', key))
  elseif op == "put" then
    local id = "u" .. math.random(0, users - 1)
    local body = string.format('{"key":"%s","value":"%s"}', b64(id), b64(user(id, math.random(0, 15))))
    return wrk.format("POST", "/v3/kv/put", headers, body)
  else
    counter = counter + 1
    local id = string.format("p%s-%d-%d", run, tid, counter)
    local key = b64(id)
    local body = string.format(
      '{"compare":[{"key":"%s","result":"EQUAL","target":"CREATE","create_revision":"0"}],'
        .. '"success":[{"request_put":{"key":"%s","value":"%s"}}]}',
      key, key, b64(user(id, counter % 16)))
    return wrk.format("POST", "/v3/kv/txn", headers, body)
  end
end
