-- Preload: POST u{n} for n = BENCH_FROM + tid + k*T below BENCH_USERS; then idles on
-- GET /health so that wrk's fixed duration ends the run.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local from = tonumber(os.getenv("BENCH_FROM") or "0")

request = function()
  -- wrk builds (and may drop) one request per thread before the run: spend it on /health.
  if not primed then
    primed = true
    return wrk.format("GET", "/health")
  end
  local n = from + tid + counter * nthreads
  counter = counter + 1
  if n >= users then
    return wrk.format("GET", "/health")
  end
  local body = string.format(
    '{"id":"u%d","name":"Preloaded User","email":"user%d@example.com","group":%d}', n, n, n % 16)
  return wrk.format("POST", "/api/user", {["Content-Type"] = "application/json"}, body)
end
