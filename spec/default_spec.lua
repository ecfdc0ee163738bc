-- default_spec.lua: policies/default.lua, the table of built-in hooks, loaded as the
-- engine loads it (in the sandbox: no os, io, debug or package).
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

describe("default policy", function()
    local cache, hooks

    before_each(function()
        cache = fake_cache.new({
            blobttl = 86400,
            upstreams = { { originhost = "https://dtr.example.com", upstreamhosts = { "https://a.example.com" } } },
        })
        hooks = engine.load({ cache = cache })
    end)

    it("defines every hook, each from its module", function()
        for _, name in ipairs(engine.HOOKS) do
            assert.is_function(hooks[name], name)
        end
        assert.equals(hooks.require("upstream").select_upstream, hooks.select_upstream)
        assert.equals(hooks.require("ttl").blob_ttl, hooks.blob_ttl)
        assert.equals(hooks.require("logformat").format_log, hooks.format_log)
        assert.equals(hooks.require("evict").evict, hooks.evict)
        assert.equals(hooks.require("select_cache").select_cache, hooks.select_cache)
        assert.equals(hooks.require("default").blob_ttl, hooks.blob_ttl)
    end)

    it("answers every hook inside the sandbox", function()
        local entry = cache.config.upstreams[1]
        assert.are.same({ "https://a.example.com", "https://dtr.example.com" },
            hooks.select_upstream({ method = "GET", kind = "blob" }, entry))
        assert.equals(86400, hooks.blob_ttl({ digest = "sha256:a", size = 1, last_pulled = 0, repositories = {} }))
        assert.truthy(hooks.format_log({ method = "GET", uri = "/v2/" }):find("^time="))
        assert.are.same({ "sha256:a" }, hooks.evict({ { digest = "sha256:a", size = 1, last_pulled = 0 } }, 1))
        local caches = { { id = "1", name = "region-us", host = "http://us:5000" } }
        assert.equals("region-us", hooks.select_cache({ kind = "blob" }, { name = "alice", cache = "region-us" }, caches))
        assert.is_nil(hooks.select_cache({ kind = "blob" }, { name = "bob" }, caches))
    end)

    it("cannot write the config", function()
        assert.has_error(function()
            cache.config.blobttl = 1
        end)
        assert.has_error(function()
            cache.config.upstreams[1].upstreamhosts[1] = "https://evil.example.com"
        end)
    end)
end)
