-- Partial update (PUT /api/user, id in the body) of random preloaded users.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

request = function()
  local body = string.format('{"id":"u%d","group":%d}', math.random(0, users - 1),
    math.random(0, 15))
  return wrk.format("PUT", "/api/user", {["Content-Type"] = "application/json"}, body)
end
