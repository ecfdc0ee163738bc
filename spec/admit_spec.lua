-- admit_spec.lua: policies/admit.lua, the default admit: every fetched blob is stored.
local fake_cache = require("helpers.fake_cache")

describe("admit.admit", function()
    local admit

    before_each(function()
        fake_cache.install({})
        package.loaded.admit = nil
        admit = require("admit")
    end)

    it("stores every blob, of any size or none", function()
        local req = { method = "GET", repository = "library/alpine", kind = "blob" }
        assert.is_true(admit.admit({ digest = "sha256:a", size = 1, repositories = { "library/alpine" } }, req))
        assert.is_true(admit.admit({ digest = "sha256:b", size = 1 << 40, repositories = {} }, req))
        assert.is_true(admit.admit({ digest = "sha256:c", repositories = {} }, req))
    end)
end)
