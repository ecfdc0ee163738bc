-- base_image_ttl_spec.lua: examples/policies/50-base-image-ttl.lua.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/50-base-image-ttl.lua")
local WEEK = 7 * 24 * 3600

describe("50-base-image-ttl", function()
    local function hooks_with(blobttl)
        return engine.load({ cache = fake_cache.new({ blobttl = blobttl }), files = { FILE } })
    end

    local function blob(...)
        return { digest = "sha256:a", size = 1, last_pulled = 0, repositories = { ... } }
    end

    it("keeps blobs of base-image repositories a week", function()
        local hooks = hooks_with(86400)
        assert.equals(WEEK, hooks.blob_ttl(blob("library/alpine")))
        assert.equals(WEEK, hooks.blob_ttl(blob("ubuntu")))
        assert.equals(WEEK, hooks.blob_ttl(blob("base/python/slim")))
    end)

    it("leaves other blobs at the configured blobttl", function()
        local hooks = hooks_with(86400)
        assert.equals(86400, hooks.blob_ttl(blob("team/app")))
        assert.equals(86400, hooks.blob_ttl(blob("library-tools/x"))) -- a prefix, not a namespace
        assert.equals(86400, hooks.blob_ttl(blob("ubuntu-custom")))
        assert.equals(86400, hooks.blob_ttl(blob()))
        assert.equals(86400, hooks.blob_ttl({ digest = "sha256:a", size = 1, last_pulled = 0 }))
    end)

    it("counts a blob shared with a base image as a base image", function()
        assert.equals(WEEK, hooks_with(86400).blob_ttl(blob("team/app", "library/debian")))
    end)

    it("never shortens a longer blobttl", function()
        assert.equals(30 * 86400, hooks_with(30 * 86400).blob_ttl(blob("library/alpine")))
    end)

    it("keeps everything when no blobttl is configured", function()
        local hooks = hooks_with(nil)
        assert.is_nil(hooks.blob_ttl(blob("library/alpine")))
        assert.is_nil(hooks.blob_ttl(blob("team/app")))
    end)

    it("overrides only blob_ttl", function()
        local hooks = hooks_with(60)
        assert.is_false(hooks.engine:builtin("blob_ttl"))
        for _, name in ipairs({ "select_upstream", "format_log", "evict", "admit" }) do
            assert.is_true(hooks.engine:builtin(name), name)
        end
    end)
end)
