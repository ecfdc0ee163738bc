-- ttl_spec.lua: policies/ttl.lua, the default blob_ttl.
local fake_cache = require("helpers.fake_cache")

describe("ttl.blob_ttl", function()
    local ttl
    local blob = { digest = "sha256:abc", size = 10, last_pulled = 1795820000, repositories = {} }

    before_each(function()
        package.loaded.ttl = nil
        ttl = require("ttl")
    end)

    it("is the configured blobttl in seconds", function()
        fake_cache.install({ blobttl = 86400 })
        assert.equals(86400, ttl.blob_ttl(blob))
    end)

    it("keeps a fraction of a second", function()
        fake_cache.install({ blobttl = 1.5 })
        assert.equals(1.5, ttl.blob_ttl(blob))
    end)

    it("is nil (keep the blob) without a blobttl", function()
        fake_cache.install({})
        assert.is_nil(ttl.blob_ttl(blob))
    end)

    it("does not depend on the blob: the core counts it from the last pull", function()
        fake_cache.install({ blobttl = 3600 })
        local other = { digest = "sha256:def", size = 1 << 30, last_pulled = 0, repositories = { "a/b" } }
        assert.equals(ttl.blob_ttl(blob), ttl.blob_ttl(other))
    end)

    it("expires_at counts from the last pull", function()
        assert.equals(1795820000 + 86400, ttl.expires_at(blob, 86400))
        assert.equals(1795820000, ttl.expires_at(blob, 0))
        assert.is_nil(ttl.expires_at(blob, nil))
    end)

    it("expires a blob pulled a day ago under a 24h TTL, not one pulled an hour ago", function()
        local cache = fake_cache.install({ blobttl = 24 * 3600 })
        local stale = { last_pulled = cache.now() - 24 * 3600 - 1 }
        local fresh = { last_pulled = cache.now() - 3600 }
        assert.is_true(ttl.expires_at(stale, ttl.blob_ttl(stale)) < cache.now())
        assert.is_true(ttl.expires_at(fresh, ttl.blob_ttl(fresh)) > cache.now())
    end)
end)
