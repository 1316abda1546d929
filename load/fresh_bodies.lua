-- wrk script for load/compare.py: every request POSTs a capture set not sent before.
-- WRK_BODIES names a directory holding `prefix`, `suffix` and `cores` (one per line): the
-- i-th request's body is prefix .. cores[i] .. suffix, all of one length (load/compare.py's
-- int16 bodies). done() prints one JSON line.
local dir = os.getenv("WRK_BODIES")

local function read(name)
  local f = assert(io.open(dir .. "/" .. name, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end

local prefix, suffix = read("prefix"), read("suffix")
local cores = {}
for line in io.lines(dir .. "/cores") do
  cores[#cores + 1] = line
end
local sent = 0
local head

function init(args)
  -- one request line and header block for all: every body has the same length
  head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port
    .. "\r\nContent-Type: application/json\r\nContent-Length: "
    .. (#prefix + #cores[1] + #suffix) .. "\r\n\r\n" .. prefix
end

function request()
  sent = sent + 1
  if sent > #cores then
    error("more requests than prepared bodies: raise load/compare.py's MAX_RATE")
  end
  return head .. cores[sent] .. suffix
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "non_2xx": %d, "socket_errors": %d, '
      .. '"p50": %.3f, "p95": %.3f, "p99": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
