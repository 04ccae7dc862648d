-- Calibration: nginx serving a static 100-byte JSON file.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")

request = function()
  return wrk.format("GET", "/user.json")
end
