-- POST /v1/readings with SW_BATCH readings per request, one per stream, across SW_BATCH
-- streams; every request is the next time step of all of them. Run one connection per wrk
-- thread: each thread has its own streams (ids carry the thread's number), so no two requests
-- in flight touch the same stream. With SW_FORMAT=columns the body is the same readings as
-- columns: {"columns": {"stream_id": [...], "timestamp": [...], "value": [...]}}.
local batch = tonumber(os.getenv("SW_BATCH") or "1000")
local next_thread = 0
local step = 0
local prefix = "b0-"
local headers = {["Content-Type"] = "application/json"}
local columns = os.getenv("SW_FORMAT") == "columns"  -- the same readings, sent as columns

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
  local body
  if columns then
    local ids, stamps, values = {}, {}, {}
    for i = 0, batch - 1 do
      ids[#ids + 1] = string.format('"%s%d"', prefix, i)
      stamps[#stamps + 1] = tostring(ts)
      values[#values + 1] = string.format('%.4f', math.sin(i + step * 0.1))
    end
    body = '{"columns":{"stream_id":[' .. table.concat(ids, ",") .. '],"timestamp":[' ..
      table.concat(stamps, ",") .. '],"value":[' .. table.concat(values, ",") .. ']}}'
  else
    local parts = {}
    for i = 0, batch - 1 do
      parts[#parts + 1] = string.format('{"stream_id":"%s%d","timestamp":%d,"value":%.4f}',
        prefix, i, ts, math.sin(i + step * 0.1))
    end
    body = '{"readings":[' .. table.concat(parts, ",") .. ']}'
  end
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
