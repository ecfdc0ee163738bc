-- default.lua: the built-in policies, the hooks that content-cache uses unless a drop-in
-- file overrides them. Each hook lives in its own module, so that a drop-in can reuse one
-- (local ttl = require("ttl")) or wrap the default (local default = require("default")).
--
-- Hooks receive plain tables and return plain values; `cache` (cache.now, cache.log,
-- cache.config) is the host's API. See lua/policy.h for the argument tables.

local upstream = require("upstream")
local ttl = require("ttl")
local logformat = require("logformat")
local evict = require("evict")
local admit = require("admit")
local outage = require("outage")
local select_cache = require("select_cache")

return {
    select_upstream = upstream.select_upstream,
    blob_ttl = ttl.blob_ttl,
    format_log = logformat.format_log,
    evict = evict.evict,
    admit = admit.admit,
    on_upstream_failure = outage.on_upstream_failure,
    select_cache = select_cache.select_cache,
}
