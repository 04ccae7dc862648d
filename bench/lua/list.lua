-- One LIST page of 50 users.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

request = function()
  return wrk.format("GET", "/api/users?limit=50")
end
