-- upstream_spec.lua: policies/upstream.lua, the default select_upstream.
local fake_cache = require("helpers.fake_cache")

describe("upstream.select_upstream", function()
    local upstream, cache
    local A, B, C = "https://a.example.com", "https://b.example.com", "https://c.example.com"
    local ORIGIN = "https://dtr.example.com"
    local req = { method = "GET", repository = "library/alpine", digest = "sha256:abc", kind = "blob" }

    before_each(function()
        cache = fake_cache.install({
            upstreams = {
                { originhost = ORIGIN, upstreamhosts = { A, B } },
                { originhost = "https://origin2.example.com", upstreamhosts = { A, B, C } },
                { originhost = "https://lonely.example.com" },
            },
        })
        package.loaded.upstream = nil -- fresh cursors, as after a reload
        upstream = require("upstream")
    end)

    it("rotates the upstreamhosts and puts the origin last", function()
        local entry = cache.config.upstreams[1]
        assert.are.same({ A, B, ORIGIN }, upstream.select_upstream(req, entry))
        assert.are.same({ B, A, ORIGIN }, upstream.select_upstream(req, entry))
        assert.are.same({ A, B, ORIGIN }, upstream.select_upstream(req, entry))
        assert.are.same({ B, A, ORIGIN }, upstream.select_upstream(req, entry))
    end)

    it("starts each rotation one host further, through all of them", function()
        local entry = cache.config.upstreams[2]
        local origin = entry.originhost
        assert.are.same({ A, B, C, origin }, upstream.select_upstream(req, entry))
        assert.are.same({ B, C, A, origin }, upstream.select_upstream(req, entry))
        assert.are.same({ C, A, B, origin }, upstream.select_upstream(req, entry))
        assert.are.same({ A, B, C, origin }, upstream.select_upstream(req, entry))
    end)

    it("keeps one cursor per upstreams entry", function()
        local first, second = cache.config.upstreams[1], cache.config.upstreams[2]
        assert.are.same({ A, B, ORIGIN }, upstream.select_upstream(req, first))
        assert.are.same({ A, B, C, second.originhost }, upstream.select_upstream(req, second))
        assert.are.same({ B, C, A, second.originhost }, upstream.select_upstream(req, second))
        assert.are.same({ B, A, ORIGIN }, upstream.select_upstream(req, first))
    end)

    it("tries only the origin when there are no upstreamhosts", function()
        local entry = cache.config.upstreams[3]
        for _ = 1, 3 do
            assert.are.same({ "https://lonely.example.com" }, upstream.select_upstream(req, entry))
        end
    end)

    it("advances once per call, whatever the request", function()
        local entry = cache.config.upstreams[1]
        upstream.select_upstream({ method = "HEAD", repository = "x", kind = "manifest" }, entry)
        assert.are.same({ B, A, ORIGIN }, upstream.select_upstream(req, entry))
    end)

    it("accepts a plain table without index, keyed by its originhost", function()
        local entry = { originhost = "https://plain.example.com", upstreamhosts = { A, B } }
        assert.are.same({ A, B, entry.originhost }, upstream.select_upstream(req, entry))
        assert.are.same({ B, A, entry.originhost }, upstream.select_upstream(req, entry))
    end)

    it("lists every configured URL exactly once", function()
        local entry = cache.config.upstreams[2]
        for _ = 1, 5 do
            local list = upstream.select_upstream(req, entry)
            table.sort(list)
            assert.are.same({ A, B, C, entry.originhost }, list)
        end
    end)
end)
