-- engine.lua: the cache's own policy engine, for specs that load policy files.
--
-- Files are loaded by lua/module/content_cache_policy.c, the engine the cache runs (its
-- sandbox, require, budget of steps, deadline and memory cap, and its checks of what a
-- file returns), built as the Lua module content_cache_policy.so next to the binary
-- (build/lua/; `.busted` puts it on package.cpath). Values cross into the engine's state
-- and back by copy, as the cache's own tables do.
--
--   local engine = require("helpers.engine")
--   local hooks = engine.load({ cache = fake_cache.new({ blobttl = 60 }), dropin = dir })
--   hooks.blob_ttl(blob)     -- the hook in force, called in the engine (a failed call
--                            -- raises "blob_ttl failed: ...")
--   hooks.engine             -- the engine: has, builtin, shipped, try, lines, advance, ...
--
-- opts: cache (a fake_cache: its config and its clock are the engine's), or config (a
-- plain table as cache.config) and now; builtin (default: the repository's policies/);
-- dropin (a policy directory, loaded as the cache loads one); files (exactly these files,
-- in this order); instructions and memory (default: the cache's limits).

local paths = require("helpers.paths")
local policy = require("content_cache_policy")

local M = {}

M.HOOKS = { "select_upstream", "blob_ttl", "format_log", "evict", "admit", "on_upstream_failure",
    "select_cache" }

-- The repository root.
M.root = paths.root

-- A path inside the repository.
function M.path(relative)
    return M.root .. "/" .. relative
end

-- A plain copy of a table (a fake cache's read-only config reads through pairs).
local function plain(value)
    if type(value) ~= "table" then
        return value
    end
    local out = {}
    for k, v in pairs(value) do
        out[k] = plain(v)
    end
    return out
end

function M.load(opts)
    local config = opts.config or (opts.cache and plain(opts.cache.config))
    local now = opts.now or (opts.cache and opts.cache.now())
    local e = policy.new({
        builtin = opts.builtin or M.path("policies"),
        dropin = opts.dropin,
        files = opts.files,
        config = config,
        now = now,
        instructions = opts.instructions,
        memory = opts.memory,
    })
    local hooks = { engine = e }
    for _, name in ipairs(M.HOOKS) do
        if e:has(name) then
            hooks[name] = function(...)
                return e:call(name, ...)
            end
        end
    end
    return hooks
end

return M
