-- wrk script of the benchmark: rotates through pre-built requests, one per cookie, and writes the
-- run's results as JSON. Configured by the environment (every Lua state of wrk sees it, whereas
-- script arguments reach only the threads' init()):
--
--   BENCH_PATH      request path
--   BENCH_COOKIES   file with one `name=value` per line; empty: requests carry no cookie
--   BENCH_OUT       where done() writes the JSON
--   BENCH_HISTOGRAM "1": also write every latency value seen with its count, to merge runs exactly
--
-- Every request carries what Heroku's router adds (X-Forwarded-For/-Proto/-Port, X-Request-ID,
-- X-Request-Start, Via, a Host of its domain), the same bytes for every variant: the shipped app
-- trusts and uses them, the others ignore them.
--
-- Requests are built once in init() and only looked up in request(), as wrk's documentation
-- advises for a fast server.

local reqs = {}
local n = 0
local i = 0

local function router_headers(k, cookie)
  local headers = {
    ["Host"] = "bench-app.herokuapp.com",
    ["X-Forwarded-For"] = "198.51.100." .. (k % 250 + 1),
    ["X-Forwarded-Proto"] = "https",
    ["X-Forwarded-Port"] = "443",
    ["X-Request-ID"] = string.format("6f1c2f9e-8d3b-4d0a-9c1e-%012d", k),
    ["X-Request-Start"] = "1796000000000",
    ["Via"] = "1.1 vegur",
  }
  if cookie then
    headers["Cookie"] = cookie
  end
  return headers
end

function init(args)
  local path = os.getenv("BENCH_PATH") or "/"
  local cookies_file = os.getenv("BENCH_COOKIES")
  if cookies_file and #cookies_file > 0 then
    for line in io.lines(cookies_file) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format("GET", path, router_headers(n, line))
      end
    end
  end
  if n == 0 then
    n = 1
    reqs[1] = wrk.format("GET", path, router_headers(1, nil))
  end
  i = math.random(n) - 1
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  out:write(string.format(
    ', "latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}',
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  if os.getenv("BENCH_HISTOGRAM") == "1" then
    out:write(', "histogram": [')
    local k = 1
    while true do
      local value, count = latency(k)
      -- Past the last distinct value wrk returns 0 (latencies are at least 1 us).
      if value == 0 or count == 0 then
        break
      end
      if k > 1 then
        out:write(",")
      end
      out:write(string.format("[%d,%d]", value, count))
      k = k + 1
    end
    out:write("]")
  end
  out:write("}\n")
  out:close()
end
