-- outage_spec.lua: policies/outage.lua, the default on_upstream_failure: nothing stale.
local fake_cache = require("helpers.fake_cache")

describe("outage.on_upstream_failure", function()
    local outage

    before_each(function()
        fake_cache.install({})
        package.loaded.outage = nil
        outage = require("outage")
    end)

    it("serves nothing from what is held, however fresh", function()
        local known = {
            upstream = "https://dtr.example.com", error = "connection refused",
            tag = { digest = "sha256:a", age = 1 },
            manifest = { digest = "sha256:a", stored = true, in_repository = true, blobs_stored = true },
            auth = { allowed = true, age = 1, verified_here = false },
        }
        assert.is_false(outage.on_upstream_failure({ method = "GET", kind = "manifest",
            repository = "a/b", reference = "latest" }, known))
        assert.is_false(outage.on_upstream_failure({ method = "GET", kind = "base" }, {}))
    end)
end)
