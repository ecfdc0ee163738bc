-- engine.lua: loads policy files as the C engine (lua/policy_vm.c) does, for specs of a
-- set of policies: builtin/default.lua, then every "*.lua" of a drop-in directory in
-- byte-wise name order (names starting with '.' and subdirectories skipped), a later file
-- overriding the hooks it defines. Files run in a sandbox like the engine's: only the
-- base library (without dofile, loadfile; load for text only), string (without dump),
-- table, math, utf8, `cache`, and a require that searches builtin then drop-in.
--
--   local engine = require("helpers.engine")
--   local hooks = engine.load({ dropin = engine.path("examples/policies"), cache = fake })
--
-- The C test (tests/unit/test_policy.c) checks the same fixture directories through the
-- real engine.

local lfs = require("lfs")
local paths = require("helpers.paths")

local M = {}

M.HOOKS = { "select_upstream", "blob_ttl", "format_log", "evict", "select_cache" }

-- The repository root.
M.root = paths.root

-- A path inside the repository.
function M.path(relative)
    return M.root .. "/" .. relative
end

-- Byte-wise comparison (strcmp), which `<` on strings is not in every locale.
local function bytes_before(a, b)
    for i = 1, math.min(#a, #b) do
        local x, y = a:byte(i), b:byte(i)
        if x ~= y then
            return x < y
        end
    end
    return #a < #b
end

-- The policy files of dir, full paths in the engine's order.
function M.dropin_files(dir)
    local names = {}
    for name in lfs.dir(dir) do
        local path = dir .. "/" .. name
        if name:sub(1, 1) ~= "." and #name > 4 and name:sub(-4) == ".lua"
            and lfs.attributes(path, "mode") == "file" then
            names[#names + 1] = name
        end
    end
    table.sort(names, bytes_before)
    for i, name in ipairs(names) do
        names[i] = dir .. "/" .. name
    end
    return names
end

local BASE = {
    "assert", "collectgarbage", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
    "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring",
    "type", "xpcall", "_VERSION",
}

-- Words of [A-Za-z0-9_-] joined by single dots, as the engine's require accepts.
local function module_name_ok(name)
    if type(name) ~= "string" or name == "" then
        return false
    end
    for word in (name .. "."):gmatch("(.-)%.") do
        if not word:match("^[A-Za-z0-9_%-]+$") then
            return false
        end
    end
    return true
end

local function sandbox(cache, dirs)
    local env = {}
    for _, name in ipairs(BASE) do
        env[name] = _G[name]
    end
    env.string = {}
    for k, v in pairs(string) do
        if k ~= "dump" then
            env.string[k] = v
        end
    end
    env.table, env.math, env.utf8 = table, math, utf8
    env.cache = cache
    env._G = env
    env.load = function(chunk, chunkname, _, e)
        return load(chunk, chunkname, "t", e or env)
    end
    env.print = function(...)
        local parts = {}
        for i = 1, select("#", ...) do
            parts[i] = tostring((select(i, ...)))
        end
        cache.log("info", table.concat(parts, "\t"))
    end

    local loaded, loading = { cache = cache }, {}
    env.require = function(name)
        if loaded[name] ~= nil then
            return loaded[name]
        end
        if loading[name] then
            error("module '" .. name .. "' requires itself (a require loop)", 2)
        end
        if not module_name_ok(name) then
            error("module '" .. name .. "' not found: a module name is words of [A-Za-z0-9_-] "
                .. "joined by '.'", 2)
        end
        local relative = name:gsub("%.", "/") .. ".lua"
        for _, dir in ipairs(dirs) do
            local path = dir .. "/" .. relative
            if lfs.attributes(path, "mode") == "file" then
                local chunk = assert(loadfile(path, "t", env))
                loading[name] = true
                local ok, result = pcall(chunk, name, path)
                loading[name] = nil
                if not ok then
                    error(result, 0)
                end
                if result == nil then
                    result = true
                end
                loaded[name] = result
                return result
            end
        end
        error("module '" .. name .. "' not found in the policy directories", 2)
    end
    return env, loaded
end

-- Runs one policy file in env and merges its hooks into hooks. Errors name file and line.
local function load_policy(env, hooks, path)
    local chunk, err = loadfile(path, "t", env)
    if not chunk then
        error(err, 0)
    end
    local policy = chunk()
    if type(policy) ~= "table" then
        error(path .. ": a policy file must return a table of hooks, not " .. type(policy), 0)
    end
    for _, name in ipairs(M.HOOKS) do
        local hook = policy[name]
        if type(hook) == "function" then
            hooks[name] = hook
        elseif hook ~= nil then
            error(path .. ": hook '" .. name .. "' is a " .. type(hook) .. ", expected a function", 0)
        end
    end
    return policy
end

-- opts: cache (a fake_cache), builtin (default: policies/), dropin (a directory, or nil),
-- files (instead of all of dropin's files: these paths, in this order). Returns the merged
-- hooks; hooks.require (from the metatable) is the sandbox's require, for specs that want
-- a module as the policies see it.
function M.load(opts)
    local builtin = opts.builtin or M.path("policies")
    local dirs = { builtin, opts.dropin }
    local env, loaded = sandbox(opts.cache, dirs)
    local hooks = {}
    loaded.default = load_policy(env, hooks, builtin .. "/default.lua")
    local files = opts.files or (opts.dropin and M.dropin_files(opts.dropin)) or {}
    for _, path in ipairs(files) do
        load_policy(env, hooks, path)
    end
    return setmetatable(hooks, { __index = { require = env.require } })
end

return M
