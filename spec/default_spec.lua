-- default_spec.lua: policies/default.lua, the table of built-in hooks, loaded by the
-- cache's own engine (in the sandbox: no os, io, debug or package).
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

describe("default policy", function()
    local cache, hooks
    local entry = { index = 1, originhost = "https://dtr.example.com", upstreamhosts = { "https://a.example.com" } }

    before_each(function()
        cache = fake_cache.new({
            blobttl = 86400,
            upstreams = { { originhost = "https://dtr.example.com", upstreamhosts = { "https://a.example.com" } } },
        })
        hooks = engine.load({ cache = cache })
    end)

    it("defines every hook, each the built-in one and as shipped", function()
        for _, name in ipairs(engine.HOOKS) do
            assert.is_function(hooks[name], name)
            assert.is_true(hooks.engine:builtin(name), name)
            assert.is_true(hooks.engine:shipped(name), name)
        end
    end)

    it("answers every hook inside the sandbox", function()
        assert.are.same({ "https://a.example.com", "https://dtr.example.com" },
            hooks.select_upstream({ method = "GET", kind = "blob" }, entry))
        assert.equals(86400, hooks.blob_ttl({ digest = "sha256:a", size = 1, last_pulled = 1, repositories = {} }))
        assert.truthy(hooks.format_log({ method = "GET", uri = "/v2/" }):find("^time="))
        assert.are.same({ "sha256:a" }, hooks.evict({ { digest = "sha256:a", size = 1, last_pulled = 1 } }, 1))
        assert.is_true(hooks.admit({ digest = "sha256:a", size = 1 }, { method = "GET", kind = "blob" }))
        local caches = { { id = "1", name = "region-us", host = "http://us:5000" } }
        assert.equals("region-us", hooks.select_cache({ kind = "blob" }, { name = "alice", cache = "region-us" }, caches))
        assert.is_nil(hooks.select_cache({ kind = "blob" }, { name = "bob" }, caches))
    end)

    it("is not as shipped once a built-in file is edited", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir " .. dir .. " && cp " .. engine.path("policies") .. "/*.lua " .. dir))
        local f = assert(io.open(dir .. "/logformat.lua", "a"))
        f:write("-- an operator's comment\n")
        f:close()
        local edited = engine.load({ cache = cache, builtin = dir })
        os.execute("rm -r " .. dir)
        assert.is_true(edited.engine:builtin("format_log"))
        assert.is_false(edited.engine:shipped("format_log"))
        assert.equals(hooks.format_log({ method = "GET", uri = "/v2/" }),
            edited.format_log({ method = "GET", uri = "/v2/" }))
    end)

    it("cannot write the config", function()
        local probe = engine.load({ cache = cache, dropin = engine.path("tests/data/policies/sandbox") })
        local report = probe.format_log({})
        assert.truthy(report:find("config_write=false", 1, true), report)
        assert.truthy(report:find("nested_write=false", 1, true), report)
    end)
end)
