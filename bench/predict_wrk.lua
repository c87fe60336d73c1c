-- wrk script for bench/predict_speed.py: POSTs real MNIST test images as PNG bodies,
-- cycling through them, and prints one JSON line of results at the end.
-- Usage: wrk -s bench/predict_wrk.lua URL -- IMAGE_DIR COUNT [KEY]
-- (IMAGE_DIR holds 0.png .. COUNT-1.png; with KEY each request carries
-- `Authorization: Bearer KEY`, as bench/predict_auth.py needs)

local bodies = {}
local next_body = 1
local headers = {["Content-Type"] = "image/png"}

function init(args)
  local dir, count = args[1], tonumber(args[2])
  for i = 0, count - 1 do
    local f = assert(io.open(dir .. "/" .. i .. ".png", "rb"))
    bodies[#bodies + 1] = f:read("*a")
    f:close()
  end
  if args[3] then
    headers["Authorization"] = "Bearer " .. args[3]
  end
  -- Threads start at different images so they do not send the same ones in step.
  next_body = (math.random(#bodies) - 1) % #bodies + 1
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, body)
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
