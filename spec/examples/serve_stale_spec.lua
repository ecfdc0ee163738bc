-- serve_stale_spec.lua: examples/policies/90-serve-stale-on-outage.lua.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")

local FILE = engine.path("examples/policies/90-serve-stale-on-outage.lua")
local HOUR, DAY = 3600, 86400

local function by_tag(age)
    return { method = "GET", kind = "manifest", repository = "team/app", reference = "v1" },
        { digest = "sha256:m", age = age }
end

local function known(parts)
    local k = { upstream = "https://dtr.example.com", error = "connection refused" }
    for key, value in pairs(parts) do
        k[key] = value
    end
    return k
end

local HELD = { digest = "sha256:m", stored = true, in_repository = true, blobs_stored = true }
local YES = { allowed = true, age = 10 * 60, verified_here = false }

describe("90-serve-stale-on-outage", function()
    local hooks

    before_each(function()
        hooks = engine.load({ cache = fake_cache.new({}), files = { FILE } })
    end)

    it("serves a tag up to a day stale to a client the origin said yes to within the hour", function()
        local req, tag = by_tag(23 * HOUR)
        assert.is_true(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD, auth = YES })))
        req, tag = by_tag(DAY + 1)
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD, auth = YES })))
    end)

    it("serves a manifest by digest, or a blob, whenever held", function()
        local req = { method = "GET", kind = "manifest", repository = "team/app",
            reference = "sha256:m", digest = "sha256:m" }
        assert.is_true(hooks.on_upstream_failure(req, known({ manifest = HELD, auth = YES })))
        local blob = { method = "GET", kind = "blob", repository = "team/app", digest = "sha256:b" }
        assert.is_true(hooks.on_upstream_failure(blob, known({
            blob = { digest = "sha256:b", stored = true, in_repository = true }, auth = YES })))
        assert.is_false(hooks.on_upstream_failure(blob, known({
            blob = { digest = "sha256:b", stored = false, in_repository = true }, auth = YES })))
    end)

    it("serves nothing to a client whose last yes is more than an hour old", function()
        local req, tag = by_tag(60)
        local old = { allowed = true, age = HOUR + 1, verified_here = false }
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD, auth = old })))
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD })))
    end)

    it("serves nothing to a client the origin refused", function()
        local req, tag = by_tag(60)
        local no = { allowed = false, age = 5, verified_here = false }
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD, auth = no })))
    end)

    it("needs no remembered answer for a token the cache verified itself", function()
        local req, tag = by_tag(60)
        local token = { allowed = true, age = 0, verified_here = true }
        assert.is_true(hooks.on_upstream_failure(req, known({ tag = tag, manifest = HELD, auth = token })))
    end)

    it("answers /v2/ so that clients get as far as the manifest", function()
        assert.is_true(hooks.on_upstream_failure({ method = "GET", kind = "base" }, known({})))
    end)

    it("serves nothing it does not hold, or hold in that repository", function()
        local req, tag = by_tag(60)
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, auth = YES })))
        local elsewhere = { digest = "sha256:m", stored = true, in_repository = false }
        assert.is_false(hooks.on_upstream_failure(req, known({ tag = tag, manifest = elsewhere, auth = YES })))
    end)
end)
