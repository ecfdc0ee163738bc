-- fake_cache.lua: the host's `cache` API for specs, without the C core.
--
--   local fake_cache = require("helpers.fake_cache")
--   local cache = fake_cache.install({ blobttl = 86400, upstreams = {...} })
--   cache.advance(60)           -- move the clock
--   cache.lines                 -- what cache.log wrote: { {level=, msg=}, ... }
--
-- It mirrors lua/policy_vm.c: cache.now() is wall-clock seconds (a float, here a clock
-- the spec sets), cache.log(level, msg) takes "error", "warn", "info" or "debug", and
-- cache.config is read-only all the way down, with the same fields: blobttl (seconds or
-- nil), upstreams = { {index, originhost, upstreamhosts}, ... }, log = {level, formatter,
-- fields = { {key=, value=}, ... }}, storage_root, policydir.

require("helpers.paths")

local M = {}

M.DEFAULT_NOW = 1795820400.5 -- 2026-11-27T23:00:00.5Z

-- A read-only view of t (nested tables too), as the engine's: writes raise errors.
function M.readonly(t)
    local raw = {}
    for k, v in pairs(t) do
        raw[k] = type(v) == "table" and M.readonly(v) or v
    end
    return setmetatable({}, {
        __index = raw,
        __newindex = function(_, key)
            error("attempt to modify a read-only table (key '" .. tostring(key) .. "')", 2)
        end,
        __len = function()
            return #raw
        end,
        __pairs = function()
            return next, raw, nil
        end,
        __metatable = "read-only",
    })
end

local LEVELS = { error = true, warn = true, warning = true, info = true, debug = true }

-- opts: now, blobttl, upstreams (list of {originhost=, upstreamhosts=}), formatter,
-- fields (list of {key=, value=}), storage_root, policydir.
function M.new(opts)
    opts = opts or {}
    local upstreams = {}
    for i, entry in ipairs(opts.upstreams or {}) do
        upstreams[i] = {
            index = i,
            originhost = entry.originhost,
            upstreamhosts = entry.upstreamhosts or {},
        }
    end

    local fake = { time = opts.now or M.DEFAULT_NOW, lines = {} }
    fake.config = M.readonly({
        blobttl = opts.blobttl,
        upstreams = upstreams,
        log = { level = "info", formatter = opts.formatter or "text", fields = opts.fields or {} },
        storage_root = opts.storage_root or "/var/lib/registry",
        policydir = opts.policydir,
    })

    function fake.now()
        return fake.time
    end

    function fake.log(level, msg)
        if type(level) ~= "string" or not LEVELS[level:lower()] then
            error("bad argument #1 to 'log' (expected \"error\", \"warn\", \"info\" or \"debug\")", 2)
        end
        fake.lines[#fake.lines + 1] = { level = level, msg = tostring(msg) }
    end

    -- Moves the clock (the spec's own; policies only read it).
    function fake.advance(seconds)
        fake.time = fake.time + seconds
    end

    -- Read-only as the engine's cache table is; fake.time and fake.lines stay reachable.
    return setmetatable({}, {
        __index = fake,
        __newindex = function(_, key)
            error("attempt to modify a read-only table (key '" .. tostring(key) .. "')", 2)
        end,
        __metatable = "read-only",
    })
end

-- Makes a fake the global `cache` that policies see, and returns it.
function M.install(opts)
    local fake = M.new(opts)
    _G.cache = fake
    return fake
end

return M
