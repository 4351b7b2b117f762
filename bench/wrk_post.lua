-- wrk script for bench/run.py: POST one OTLP/HTTP protobuf body again and again.
--
-- Environment: BENCH_BODY (file with the request body), BENCH_AUTH (Authorization header value,
-- optional). done() prints one line "JSON {...}": requests sent (requests still in flight when
-- the run ends count as sent, not answered), answered 200 / other, wrk's error counts and latency
-- percentiles in microseconds.

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local auth = os.getenv("BENCH_AUTH") or ""

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-protobuf"
if auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  ok = 0
  other = 0
  prepared = wrk.format()
end

function request()
  sent = sent + 1
  return prepared
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local s, o, x = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    o = o + t:get("ok")
    x = x + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"sent": %d, "ok": %d, "other_status": %d, "completed": %d, "duration_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, '
      .. '"timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"mean_us": %.1f}\n',
    s, o, x, summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
