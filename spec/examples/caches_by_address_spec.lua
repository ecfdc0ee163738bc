-- caches_by_address_spec.lua: examples/policies/80-caches-by-address.lua, the front's
-- select_cache by the client's address.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/80-caches-by-address.lua")

describe("80-caches-by-address", function()
    local hooks
    local caches = {
        { id = "1", name = "region-us", host = "http://us.example.com:5000" },
        { id = "2", name = "region-eu", host = "http://eu.example.com:5000" },
    }

    local function req(addr)
        return { method = "GET", kind = "blob", repository = "org/app", digest = "sha256:a",
                 remote_addr = addr }
    end

    before_each(function()
        hooks = engine.load({ cache = fake_cache.new({}), files = { FILE } })
    end)

    it("sends a client to the cache of its network, whatever the user chose", function()
        assert.equals("region-us", hooks.select_cache(req("10.10.3.4:51000"), { name = "a" }, caches))
        assert.equals("region-eu", hooks.select_cache(req("10.20.0.1:1"), { name = "a", cache = "region-us" }, caches))
        assert.equals("region-eu", hooks.select_cache(req("192.168.255.255:80"), { name = "a" }, caches))
    end)

    it("falls back to the user's choice, or none, outside the ranges", function()
        assert.equals("region-us", hooks.select_cache(req("172.16.0.1:4000"), { name = "a", cache = "region-us" }, caches))
        assert.is_nil(hooks.select_cache(req("172.16.0.1:4000"), { name = "a" }, caches))
        assert.is_nil(hooks.select_cache(req("10.11.0.1:4000"), { name = "a" }, caches)) -- next to a range
    end)

    it("never names a cache that is not registered", function()
        local only_us = { caches[1] }
        assert.is_nil(hooks.select_cache(req("10.20.0.1:1"), { name = "a" }, only_us))
        assert.equals("region-us", hooks.select_cache(req("10.20.0.1:1"), { name = "a", cache = "region-us" }, only_us))
    end)

    it("leaves IPv6 and odd addresses to the user's choice", function()
        assert.equals("region-eu", hooks.select_cache(req("[::1]:5000"), { name = "a", cache = "region-eu" }, caches))
        assert.is_nil(hooks.select_cache(req("10.10.0.300:1"), { name = "a" }, caches))
        assert.is_nil(hooks.select_cache(req(nil), { name = "a" }, caches))
    end)
end)
