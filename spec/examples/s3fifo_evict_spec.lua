-- s3fifo_evict_spec.lua: examples/policies/70-s3fifo-evict.lua, against the default LRU.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/70-s3fifo-evict.lua")
local DAY = 86400

local function blob(name, created, last_pulled, pulls, size)
    return { digest = "sha256:" .. name, size = size or 100, created = created,
        last_pulled = last_pulled, pulls = pulls, repositories = {} }
end

describe("70-s3fifo-evict", function()
    local hooks, lru

    before_each(function()
        local cache = fake_cache.new({})
        hooks = engine.load({ cache = cache, files = { FILE } })
        lru = engine.load({ cache = cache })
    end)

    -- Ten hot blobs, stored a month ago and pulled every day (last an hour ago), and a scan
    -- of thirty cold blobs, each pulled once in the last minutes.
    local function hot_set_and_scan()
        local now = 100 * DAY
        local cands = {}
        for i = 1, 10 do
            cands[#cands + 1] = blob("hot" .. i, now - 30 * DAY, now - 3600 - i, 30)
        end
        for i = 1, 30 do
            cands[#cands + 1] = blob("scan" .. i, now - 600 + i, now - 600 + i, 1)
        end
        return cands
    end

    local function count(victims, prefix)
        local n = 0
        for _, digest in ipairs(victims) do
            if digest:find("sha256:" .. prefix, 1, true) then
                n = n + 1
            end
        end
        return n
    end

    it("keeps the hot set through a scan, where LRU flushes it", function()
        local cands = hot_set_and_scan()
        local victims = hooks.evict(cands, 1000)
        assert.equals(10, #victims)
        assert.equals(0, count(victims, "hot"))
        assert.equals(10, count(lru.evict(cands, 1000), "hot"))
    end)

    it("evicts one-hit blobs oldest first", function()
        local victims = hooks.evict(hot_set_and_scan(), 300)
        assert.are.same({ "sha256:scan1", "sha256:scan2", "sha256:scan3" }, victims)
    end)

    it("gives the newest one-hit blobs (10% of the bytes) until after the hot set", function()
        local cands = hot_set_and_scan() -- 4000 bytes: the newest 4 scan blobs are young
        local victims = hooks.evict(cands, 4000)
        assert.equals(40, #victims)
        assert.are.same({ "sha256:scan26", "sha256:hot10" }, { victims[26], victims[27] })
        assert.are.same({ "sha256:hot1", "sha256:scan27" }, { victims[36], victims[37] })
        assert.equals("sha256:scan30", victims[40])
    end)

    it("tells one-hit blobs by their pulls, not by their times", function()
        local now = 100 * DAY
        local cands = {
            blob("once", now - DAY, now - DAY + 30, 1), -- stored, pulled once
            blob("again", now - 2 * DAY, now - 2 * DAY + 30, 2), -- the same times, pulled twice
            blob("fresh", now - 100, now - 100, 1, 1500), -- newer: the young tenth
            blob("bulk", now - 50 * DAY, now - 3600, 9, 10000),
        }
        assert.equals("sha256:once", hooks.evict(cands, 100)[1])
        assert.equals("sha256:again", lru.evict(cands, 100)[1])
    end)

    it("is LRU for candidates without pulls", function()
        local cands = { blob("a", 1, 30), blob("b", 1, 10), blob("c", 1, 20) }
        assert.are.same(lru.evict(cands, 200), hooks.evict(cands, 200))
    end)

    it("deletes nothing when nothing is needed, and everything when needed", function()
        local cands = hot_set_and_scan()
        assert.are.same({}, hooks.evict(cands, 0))
        assert.equals(40, #hooks.evict(cands, 1e9))
    end)
end)

describe("the example policies together", function()
    it("load as one drop-in directory, each hook from its file", function()
        local cache = fake_cache.new({ blobttl = 86400 })
        local hooks = engine.load({ cache = cache, dropin = engine.path("examples/policies") })
        assert.equals(7 * DAY, hooks.blob_ttl({ digest = "sha256:a", size = 1, last_pulled = 0,
            repositories = { "library/alpine" } }))
        assert.equals("{", hooks.format_log({ method = "GET" }):sub(1, 1))
        local cands = { blob("hot", 1, 10 * DAY, 5), blob("once", 5 * DAY, 5 * DAY, 1) }
        assert.are.same({ "sha256:once" }, hooks.evict(cands, 1))
        assert.is_false(hooks.admit({ digest = "sha256:huge", size = 3 * 1024 ^ 3 },
            { method = "GET", kind = "blob" }))
    end)
end)
