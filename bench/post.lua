-- wrk script shared by every target of bench/cell-node.ts: the same POST, the same
-- headers, the same body for all of them. The body and the Authorization header come
-- from the environment (BENCH_BODY, BENCH_AUTH); the baselines ignore the header.
-- done() (bench/report.lua) prints one machine-readable line with the counts and latency percentiles (µs).

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

-- done(): bench/report.lua, next to this script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
