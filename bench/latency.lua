-- wrk script: prints one machine-readable line after the run:
-- "RESULT <requests> <errors> <p50 us> <p99 us> <p99.9 us> <duration us>"
-- (errors: connect, read, write, timeout and non-2xx/3xx answers).
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format("RESULT %d %d %d %d %d %d\n",
    summary.requests, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.duration))
end
