-- wrk script for bench/alias.ts: the same POST, headers and body for both targets (the node's
-- own :execute URL and the alias's); only the URL on wrk's command line differs. The body and
-- the Authorization header come from the environment (BENCH_BODY, BENCH_AUTH).
-- done() (bench/report.lua) prints one machine-readable line with the counts and latency percentiles (µs).

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")

-- done(): bench/report.lua, next to this script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
