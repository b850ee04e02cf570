-- wrk script of the benchmark (tests/bench.sh): POST /score with the body in
-- $BENCH_BODY; with $BENCH_RATE (requests per second in all) each of wrk's
-- $BENCH_THREADS threads sends on a fixed schedule (wrk's delay() hook, called in the
-- thread's own Lua state before each request of its connections), otherwise as fast as
-- answers come back. done() prints one JSON line the benchmark reads.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *t);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local body_file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = "application/json"

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local interval = rate > 0 and 1000 * threads / rate or 0
local next_send = nil

function delay()
  if interval == 0 then
    return 0
  end
  local current = now_ms()
  if next_send == nil then
    -- Spread the threads' first sends over one interval.
    next_send = current + math.random() * interval
  else
    next_send = next_send + interval
  end
  local wait = next_send - current
  if wait < 0 then
    return 0
  end
  return wait
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors_4xx_5xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
