-- wrk script for W5 / W6 (bench/sessions.py): POST a sequence of bodies in order, each to its own path.
--   BENCH_LIST     file of "<path>\t<body file>" lines, in sequence order
--   BENCH_MODE     "session": the patient suffix changes every BENCH_SESSION_LEN requests (one session,
--                  one patient); "unique": it changes on every request (nothing repeats)
--   BENCH_SESSION_LEN  requests per session (5)
--   BENCH_NONCE    a short string unique to this wrk run, so no two runs send the same patient
--   BENCH_THREADS  wrk's thread count (to spread the threads over the sequence)
-- Run with as many threads as connections (bench/run.py does): each thread then drives one connection,
-- so one connection's requests follow the session order exactly, as one clinician's EHR would send them.
-- Each thread starts at a different place in the sequence. "@@P@@" in a body becomes the suffix,
-- "@@H@@" a fresh hookInstance. Prints one "BENCH_JSON {...}" line like post.lua.

local list_path = os.getenv("BENCH_LIST")
local mode = os.getenv("BENCH_MODE") or "session"
local session_len = tonumber(os.getenv("BENCH_SESSION_LEN") or "5")
local nonce = os.getenv("BENCH_NONCE") or "n"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "8")

local paths, bodies = {}, {}
for line in io.lines(list_path) do
  local path, file = line:match("^(%S+)\t(.+)$")
  if path then
    local f = assert(io.open(file, "rb"))
    table.insert(paths, path)
    table.insert(bodies, f:read("*a"))
    f:close()
  end
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  responses = 0
  sent = 0
  local n = #bodies
  -- spread the threads over the sequence, at session boundaries
  local sessions = math.max(1, math.floor(n / session_len))
  local start_session = math.floor((tid - 1) * sessions / nthreads)
  position = (start_session * session_len) % n
  headers = {["Content-Type"] = "application/json", ["Connection"] = "keep-alive"}
end

function request()
  local i = position + 1
  position = (position + 1) % #bodies
  local unit = (mode == "unique") and sent or math.floor(sent / session_len)
  local suffix = string.format("%s%d%d", nonce, tid, unit)
  sent = sent + 1
  local hi = string.format("00000000-0000-4000-8%03d-%012d", tid, sent)
  local body = bodies[i]:gsub("@@P@@", suffix):gsub("@@H@@", hi)
  return wrk.format("POST", paths[i], headers, body)
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
