-- wrk script for bench/predict_v2.py: POSTs prepared requests, cycling through them, and
-- prints one JSON line of results at the end (the line bench/predict_speed.py reads).
-- Usage: wrk -s bench/requests_wrk.lua URL -- DIR COUNT
-- DIR holds 0.body .. COUNT-1.body, each request's body, and 0.hdr .. COUNT-1.hdr, its
-- headers, one `Name: value` a line (a body's own Content-Type, or the Open Inference
-- Protocol's Inference-Header-Content-Length, which differs from body to body).

local requests = {}
local next_request = 1

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  local dir, count = args[1], tonumber(args[2])
  for i = 0, count - 1 do
    local headers = {}
    for line in read(dir .. "/" .. i .. ".hdr"):gmatch("[^\n]+") do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      headers[name] = value
    end
    requests[#requests + 1] = {headers = headers, body = read(dir .. "/" .. i .. ".body")}
  end
  -- Threads start at different requests so they do not send the same ones in step.
  next_request = (math.random(#requests) - 1) % #requests + 1
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return wrk.format("POST", nil, r.headers, r.body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
