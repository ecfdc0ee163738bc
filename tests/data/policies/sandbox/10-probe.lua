-- format_log reports what the sandbox lets a policy reach, one word per probe.
local function probe()
    local words = {}
    local function add(name, value)
        words[#words + 1] = name .. "=" .. tostring(value)
    end
    add("io", type(io))
    add("os", type(os))
    add("debug", type(debug))
    add("package", type(package))
    add("coroutine", type(coroutine))
    add("dofile", type(dofile))
    add("loadfile", type(loadfile))
    add("dump", type(string.dump))
    add("binary", (load("\27Lua fake binary chunk")) ~= nil)
    add("text", load("return 1 + 1")())
    add("outside", (pcall(require, "outside.secret")))
    add("dotdot", (pcall(require, "../outside/secret")))
    add("slash", (pcall(require, "/etc/passwd")))
    add("builtin", type(require("ttl").blob_ttl))
    add("same", require("default") == require("default"))
    add("cache_module", require("cache") == cache)
    add("config_write", (pcall(function() cache.config.blobttl = 1 end)))
    add("nested_write", (pcall(function() cache.config.upstreams[1].originhost = "x" end)))
    add("cache_write", (pcall(function() cache.now = nil end)))
    -- pairs' second result is what next() is given: it must be the view, not the table
    -- behind it.
    add("pairs_write", (pcall(function()
        local _, state = pairs(cache.config)
        state.blobttl = 1
    end)))
    add("nested_pairs_write", (pcall(function()
        for _, upstream in pairs(cache.config.upstreams) do
            local _, state = pairs(upstream)
            state.originhost = "x"
        end
    end)))
    add("rawset_cache", (pcall(rawset, cache, "log", print)))
    add("rawset_config", (pcall(rawset, cache.config, "blobttl", 1)))
    add("setmetatable_config", (pcall(setmetatable, cache.config, nil)))
    local keys = 0
    for _ in pairs(cache.config) do
        keys = keys + 1
    end
    add("keys", keys)
    add("hosts", #cache.config.upstreams[1].upstreamhosts)
    add("ttl", cache.config.blobttl)
    add("root", cache.config.storage_root)
    add("now", cache.now())
    return table.concat(words, " ")
end

return {
    format_log = function(entry)
        return probe()
    end,
}
