-- wrk script for `make cluster-bench`: POST hook requests read from the files named in CDS_BENCH_BODIES
-- (one per line: "<path> <body file>"), rotating over them, each with a fresh hookInstance.
local requests = {}
local list = assert(io.open(os.getenv("CDS_BENCH_BODIES"), "r"))
for line in list:lines() do
  local path, file = line:match("^(%S+) (%S+)$")
  local f = assert(io.open(file, "rb"))
  table.insert(requests, { path = path, body = f:read("*a") })
  f:close()
end
list:close()

local counter = 0
local non2xx = 0

function request()
  counter = counter + 1
  local r = requests[(counter % #requests) + 1]
  local body = r.body:gsub("HOOK_INSTANCE", string.format("00000000-0000-4000-8000-%012d", counter))
  return wrk.format("POST", r.path, { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  if status ~= 200 then non2xx = non2xx + 1 end
end
