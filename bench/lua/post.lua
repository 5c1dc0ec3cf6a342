-- wrk script: POST one JSON body (file named by BENCH_BODY) to the URL given on the command line,
-- and print the results as one JSON line (prefixed "BENCH_JSON ") for bench/run.py.
-- Non-2xx responses count as errors (wrk's "status" errors count only >= 400, so we count here too).

local body_path = os.getenv("BENCH_BODY")
local f = assert(io.open(body_path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Connection"] = "keep-alive"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  responses = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad, seen = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    seen = seen + t:get("responses")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"responses":%d,"non2xx":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, seen, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9)))
end
