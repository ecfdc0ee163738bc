-- admit_max_size_spec.lua: examples/policies/80-admit-max-size.lua.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/80-admit-max-size.lua")
local GiB = 1024 * 1024 * 1024
local REQ = { method = "GET", repository = "ml/model", kind = "blob" }

describe("80-admit-max-size", function()
    local hooks

    before_each(function()
        hooks = engine.load({ cache = fake_cache.new({}), files = { FILE } })
    end)

    it("stores blobs up to 2 GiB", function()
        assert.is_true(hooks.admit({ digest = "sha256:a", size = 1 }, REQ))
        assert.is_true(hooks.admit({ digest = "sha256:a", size = 2 * GiB }, REQ))
    end)

    it("streams larger blobs through without storing them", function()
        assert.is_false(hooks.admit({ digest = "sha256:a", size = 2 * GiB + 1 }, REQ))
        assert.is_false(hooks.admit({ digest = "sha256:a", size = 40 * GiB }, REQ))
    end)

    it("stores a blob of unknown length", function()
        assert.is_true(hooks.admit({ digest = "sha256:a" }, REQ))
    end)

    it("overrides only admit", function()
        assert.is_false(hooks.engine:builtin("admit"))
        for _, name in ipairs({ "select_upstream", "blob_ttl", "format_log", "evict" }) do
            assert.is_true(hooks.engine:builtin(name), name)
        end
    end)
end)
