-- One reading per request, POST /v1/streams/{id}/readings. Streams are taken in turn, so each
-- stream's timestamps increase by one per pass and a stream's next reading is sent only
-- STREAMS requests later (far more than the connections in flight: no reordering).
local streams = tonumber(os.getenv("SW_STREAMS") or "1000")
local prefix = os.getenv("SW_PREFIX") or "bench"  -- a warm-up run uses streams of its own
local counter = tonumber(os.getenv("SW_FIRST") or "0")  -- readings sent before this run
local headers = {["Content-Type"] = "application/json"}

request = function()
  local n = counter
  counter = counter + 1
  local stream = n % streams
  local ts = 1767225600 + math.floor(n / streams)
  local body = string.format('{"timestamp":%d,"value":%.4f}', ts, math.sin(n * 0.1))
  return wrk.format("POST", "/v1/streams/" .. prefix .. "-" .. stream .. "/readings", headers, body)
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
