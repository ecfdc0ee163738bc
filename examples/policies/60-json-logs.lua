-- 60-json-logs.lua: JSON access logs with extra fields, whatever log.formatter says.
--
-- The default line (see policies/logformat.lua), as JSON, plus fields that make log
-- queries easier:
--   service        "content-cache", to tell these lines from others in a shared index
--   namespace      the first part of the repository ("library" of "library/alpine")
--   duration_ms    the duration as a number (http.response.duration is Go's text)
--   cache_hit      true when the bytes came from the cache (hit, or coalesced onto a
--                  download already under way), false when they came from upstream
--   upstream_host  the host of the upstream used, without scheme and path
-- Diagnostic lines keep log.formatter: set it to json too for one format everywhere.

local logformat = require("logformat")

local HITS = { hit = true, coalesced = true }

return {
    format_log = function(entry)
        local list = logformat.pairs(entry)
        local function add(key, value)
            if value ~= nil then
                list[#list + 1] = { key, value }
            end
        end

        add("service", "content-cache")
        if entry.repository then
            add("namespace", entry.repository:match("^([^/]+)/") or entry.repository)
        end
        add("duration_ms", entry.duration_ms)
        if entry.cache then
            add("cache_hit", HITS[entry.cache] == true)
        end
        if entry.upstream then
            add("upstream_host", entry.upstream:match("^%a[%w+.-]*://([^/]+)"))
        end
        return logformat.json(list)
    end,
}
