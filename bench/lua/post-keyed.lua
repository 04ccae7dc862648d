-- POST of unique new users, each with its own Idempotency-Key (the retry-safe create).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local run = os.getenv("BENCH_RUN") or "0"

request = function()
  counter = counter + 1
  local id = string.format("k%s-%d-%d", run, tid, counter)
  local body = string.format(
    '{"id":"%s","name":"Bench User","email":"bench@example.com","group":%d}', id, counter % 16)
  return wrk.format("POST", "/api/user",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "key-" .. id}, body)
end
