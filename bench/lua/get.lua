-- GET of random preloaded users u0 .. u{BENCH_USERS-1}.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

request = function()
  return wrk.format("GET", "/api/user/u" .. math.random(0, users - 1))
end
