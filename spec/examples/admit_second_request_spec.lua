-- admit_second_request_spec.lua: examples/policies/81-admit-second-request.lua.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/81-admit-second-request.lua")
local REQ = { method = "GET", repository = "team/app", kind = "blob" }

local function blob(name)
    return { digest = "sha256:" .. name, size = 100 }
end

describe("81-admit-second-request", function()
    local hooks

    before_each(function()
        hooks = engine.load({ cache = fake_cache.new({}), files = { FILE } })
    end)

    it("streams a blob through on its first request and stores it on the second", function()
        assert.is_false(hooks.admit(blob("a"), REQ))
        hooks.engine:advance(60)
        assert.is_true(hooks.admit(blob("a"), REQ))
    end)

    it("counts each blob on its own", function()
        assert.is_false(hooks.admit(blob("a"), REQ))
        assert.is_false(hooks.admit(blob("b"), REQ))
        assert.is_true(hooks.admit(blob("b"), REQ))
        assert.is_true(hooks.admit(blob("a"), REQ))
    end)

    it("starts again when the second request comes after the window", function()
        assert.is_false(hooks.admit(blob("a"), REQ))
        hooks.engine:advance(3601)
        assert.is_false(hooks.admit(blob("a"), REQ))
        hooks.engine:advance(10)
        assert.is_true(hooks.admit(blob("a"), REQ))
    end)

    it("stops a one-time scan at the door", function()
        for i = 1, 500 do
            assert.is_false(hooks.admit(blob("scan" .. i), REQ))
        end
    end)

    it("remembers a bounded number of first requests, within the cache's budget", function()
        for i = 1, 25000 do
            assert.is_false(hooks.admit(blob("many" .. i), REQ))
            -- Time goes on (a second every 1,000 requests, all within the window): what is
            -- forgotten is the oldest, not whatever a table walk meets first.
            if i % 1000 == 0 then
                hooks.engine:advance(1)
            end
        end
        assert.equals(0, hooks.engine:errors("admit"))
        -- The newest are still remembered; the oldest were forgotten.
        assert.is_true(hooks.admit(blob("many25000"), REQ))
        assert.is_false(hooks.admit(blob("many1"), REQ))
    end)
end)
