-- wrk reporter for bench/gateway.ts. The request itself comes from the command line
-- (GET of the URL's path, headers via -H), identical for every target; this script only
-- adds done(), which prints one machine-readable line with the counts and latency
-- percentiles (µs).

-- done(): bench/report.lua, next to this script
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
