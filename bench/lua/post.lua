-- POST of unique new users.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local run = os.getenv("BENCH_RUN") or "0"

request = function()
  counter = counter + 1
  local body = string.format(
    '{"id":"p%s-%d-%d","name":"Bench User","email":"bench@example.com","group":%d}',
    run, tid, counter, counter % 16)
  return wrk.format("POST", "/api/user", {["Content-Type"] = "application/json"}, body)
end
