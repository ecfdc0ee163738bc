-- evict_spec.lua: policies/evict.lua, the default evict (least recently pulled first).
local fake_cache = require("helpers.fake_cache")

describe("evict.evict", function()
    local evict

    local function blob(n, last_pulled, size)
        return { digest = "sha256:" .. n, size = size or 100, last_pulled = last_pulled, repositories = {} }
    end

    before_each(function()
        fake_cache.install({})
        package.loaded.evict = nil
        evict = require("evict")
    end)

    it("deletes the least recently pulled first, until bytes_needed is covered", function()
        local cands = { blob(1, 40), blob(2, 10), blob(3, 30), blob(4, 20) }
        assert.are.same({ "sha256:2", "sha256:4" }, evict.evict(cands, 150))
        assert.are.same({ "sha256:2", "sha256:4" }, evict.evict(cands, 200))
        assert.are.same({ "sha256:2", "sha256:4", "sha256:3" }, evict.evict(cands, 201))
    end)

    it("deletes nothing when nothing is needed", function()
        assert.are.same({}, evict.evict({ blob(1, 1) }, 0))
        assert.are.same({}, evict.evict({}, 100))
    end)

    it("deletes everything when that is still not enough", function()
        local cands = { blob(1, 2), blob(2, 1) }
        assert.are.same({ "sha256:2", "sha256:1" }, evict.evict(cands, 10000))
    end)

    it("counts sizes, not blobs", function()
        local cands = { blob("big", 10, 1000), blob("small", 5, 1) }
        assert.are.same({ "sha256:small", "sha256:big" }, evict.evict(cands, 2))
        assert.are.same({ "sha256:small" }, evict.evict(cands, 1))
    end)

    it("breaks ties by digest, so the order does not depend on the input's", function()
        local a = { blob("b", 5), blob("a", 5), blob("c", 5) }
        local b = { blob("c", 5), blob("a", 5), blob("b", 5) }
        assert.are.same({ "sha256:a", "sha256:b", "sha256:c" }, evict.evict(a, 300))
        assert.are.same(evict.evict(a, 300), evict.evict(b, 300))
    end)

    it("does not reorder the candidates it was given", function()
        local cands = { blob(1, 40), blob(2, 10) }
        evict.evict(cands, 1000)
        assert.equals("sha256:1", cands[1].digest)
    end)

    it("flushes a hot set with one scan of cold blobs (the trade-off of LRU)", function()
        local cands = {}
        for i = 1, 10 do
            cands[#cands + 1] = blob("hot" .. i, 1000 - i) -- pulled often, last an hour ago
        end
        for i = 1, 10 do
            cands[#cands + 1] = blob("scan" .. i, 2000 + i) -- pulled once, just now
        end
        local victims = evict.evict(cands, 500)
        assert.equals(5, #victims)
        for _, digest in ipairs(victims) do
            assert.truthy(digest:find("hot", 1, true))
        end
    end)
end)
