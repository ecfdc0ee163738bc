-- json_logs_spec.lua: examples/policies/60-json-logs.lua.
local engine = require("helpers.engine")
local fake_cache = require("helpers.fake_cache")
local json = require("dkjson")

local FILE = engine.path("examples/policies/60-json-logs.lua")

describe("60-json-logs", function()
    local hooks

    local function entry()
        return {
            time = 1795820400.123, method = "GET", uri = "/v2/library/alpine/blobs/sha256:abc",
            repository = "library/alpine", digest = "sha256:abc", status = 200, bytes = 3401,
            duration_ms = 1.25, cache = "coalesced", upstream = "https://a.example.com:5000/prefix",
            remote_addr = "10.0.0.7:51234", user_agent = "docker/24.0.7",
        }
    end

    before_each(function()
        local cache = fake_cache.new({ formatter = "text", fields = { { key = "environment", value = "staging" } } })
        hooks = engine.load({ cache = cache, files = { FILE } })
    end)

    it("writes JSON even when log.formatter is text", function()
        local decoded = assert(json.decode(hooks.format_log(entry())))
        assert.equals("response completed", decoded.msg)
        assert.equals("2026-11-27T23:00:00.123Z", decoded.time)
        assert.equals("staging", decoded.environment)
        assert.equals(200, decoded["http.response.status"])
        assert.equals("1.25ms", decoded["http.response.duration"])
    end)

    it("adds the extra fields, typed", function()
        local decoded = assert(json.decode(hooks.format_log(entry())))
        assert.equals("content-cache", decoded.service)
        assert.equals("library", decoded.namespace)
        assert.equals(1.25, decoded.duration_ms)
        assert.is_true(decoded.cache_hit)
        assert.equals("a.example.com:5000", decoded.upstream_host)
    end)

    it("says cache_hit false for a miss and leaves out what the entry lacks", function()
        local e = entry()
        e.cache, e.repository, e.upstream, e.duration_ms = "miss", "alpine", nil, nil
        local decoded = assert(json.decode(hooks.format_log(e)))
        assert.is_false(decoded.cache_hit)
        assert.equals("alpine", decoded.namespace)
        assert.is_nil(decoded.upstream_host)
        assert.is_nil(decoded.duration_ms)

        decoded = assert(json.decode(hooks.format_log({ method = "GET", uri = "/v2/" })))
        assert.is_nil(decoded.cache_hit)
        assert.is_nil(decoded.namespace)
    end)

    it("stays one valid line for a hostile user agent", function()
        local e = entry()
        e.user_agent = 'x"}\n{"level":"error","msg":"forged'
        local line = hooks.format_log(e)
        assert.is_nil(line:find("\n", 1, true))
        local decoded, _, err = json.decode(line)
        assert.is_nil(err)
        assert.equals(e.user_agent, decoded["http.request.useragent"])
        assert.equals("info", decoded.level)
    end)
end)
