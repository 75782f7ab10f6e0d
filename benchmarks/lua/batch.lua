-- POST /v1/readings with SW_BATCH readings per request, one per stream, across SW_BATCH
-- streams; every request is the next time step of all of them. Run one connection per wrk
-- thread: each thread has its own streams (ids carry the thread's number), so no two requests
-- in flight touch the same stream.
local batch = tonumber(os.getenv("SW_BATCH") or "1000")
local next_thread = 0
local step = 0
local prefix = "b0-"
local headers = {["Content-Type"] = "application/json"}

setup = function(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

init = function(args)
  prefix = (os.getenv("SW_PREFIX") or "b") .. tostring(thread_id) .. "-"
end

request = function()
  local ts = 1767225600 + step
  step = step + 1
  local parts = {}
  for i = 0, batch - 1 do
    parts[#parts + 1] = string.format('{"stream_id":"%s%d","timestamp":%d,"value":%.4f}',
      prefix, i, ts, math.sin(i + step * 0.1))
  end
  local body = '{"readings":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/readings", headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
