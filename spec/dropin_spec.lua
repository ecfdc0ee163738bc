-- dropin_spec.lua: drop-in files over the defaults, loaded by the cache's own engine, in
-- byte-wise name order, a later file overriding only the hooks it defines. Same fixtures
-- and expectations as the C test (tests/data/policies, test_policy.c).
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

describe("drop-in policies", function()
    local cache, default

    before_each(function()
        cache = fake_cache.new({
            blobttl = 86400,
            upstreams = { { originhost = "https://dtr.example.com",
                upstreamhosts = { "https://a.example.com", "https://b.example.com" } } },
        })
        default = engine.load({ cache = cache })
    end)

    it("are loaded in byte-wise name order, skipping dot files, other names and directories", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/order") })
        assert.equals("10-a 2-b B-upper a-lower z-report", hooks.format_log({}))
    end)

    it("override a hook that two files define with the later file's", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/override") })
        assert.equals(120, hooks.blob_ttl({ digest = "sha256:a", size = 1, last_pulled = 1 }))
        assert.equals("custom GET /v2/", hooks.format_log({ method = "GET", uri = "/v2/" }))
        assert.is_false(hooks.engine:builtin("blob_ttl"))
    end)

    it("leave the hooks they do not define to the defaults", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/override") })
        local cands = { { digest = "sha256:new", size = 5, last_pulled = 20 },
            { digest = "sha256:old", size = 5, last_pulled = 10 } }
        assert.is_true(hooks.engine:builtin("evict"))
        assert.are.same(default.evict(cands, 1), hooks.evict(cands, 1))
        assert.are.same({ "sha256:old" }, hooks.evict(cands, 1))
    end)

    it("can require helper modules from their subdirectories", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/override") })
        local entry = { index = 1, originhost = "https://dtr.example.com",
            upstreamhosts = { "https://a.example.com", "https://b.example.com" } }
        assert.are.same({ "https://dtr.example.com", "https://a.example.com", "https://b.example.com" },
            hooks.select_upstream({ method = "GET" }, entry))
    end)

    it("that do not load are errors naming the file and line", function()
        for dir, want in pairs({
            ["broken-syntax"] = "10%-bad%.lua:4:",
            ["broken-return"] = "10%-number%.lua:4: a policy file must return a table of hooks, not number",
            ["broken-hook"] = "10%-hook%.lua:%d+: hook 'blob_ttl' is a number, expected a function",
        }) do
            local ok, err = pcall(engine.load, { cache = cache, dropin = engine.path("tests/data/policies/" .. dir) })
            assert.is_false(ok)
            assert.truthy(tostring(err):find(want), tostring(err))
        end
    end)

    it("cannot reach io, os or modules outside the policy directories", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/sandbox") })
        local report = hooks.format_log({})
        for _, word in ipairs({ "io=nil", "os=nil", "debug=nil", "package=nil", "coroutine=nil", "dofile=nil",
            "loadfile=nil", "dump=nil", "binary=false", "outside=false", "dotdot=false",
            "config_write=false", "nested_write=false", "cache_write=false", "cache_module=true",
            "pairs_write=false", "rawset_config=false", "setmetatable_config=false" }) do
            assert.truthy(report:find(word, 1, true), word .. " in " .. report)
        end
    end)

    it("run under the cache's budget: a loop ends its call, and the engine goes on", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/misbehaving") })
        local ok, why = hooks.engine:try("blob_ttl", { digest = "loop" })
        assert.is_false(ok)
        assert.truthy(why:find("instruction budget exceeded", 1, true), why)
        assert.equals(1, hooks.engine:errors("blob_ttl"))
        assert.equals(42, hooks.blob_ttl({ digest = "fine" }))
    end)

    it("run under the cache's memory cap", function()
        local hooks = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/misbehaving") })
        local ok, why = hooks.engine:try("blob_ttl", { digest = "hog" })
        assert.is_false(ok)
        assert.truthy(why:find("memory cap", 1, true), why)
        assert.equals(42, hooks.blob_ttl({ digest = "fine" }))
    end)
end)
