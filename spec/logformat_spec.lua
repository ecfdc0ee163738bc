-- logformat_spec.lua: policies/logformat.lua, the default format_log (text and JSON) and
-- its escaping, which must leave a hostile client no way to forge a line or a field.
local fake_cache = require("helpers.fake_cache")
local logfmt = require("helpers.logfmt")
local json = require("dkjson")

local HOSTILE = {
    "x\nlevel=error msg=forged",
    'say "hi" \\ bye',
    "\1\127\27[31m",
    "tab\there\r",
    "caf\xc3\xa9",
    "\xff\xfe",
    "\xe2\x80\xa8",
    "\xc2\x85",
    "\xed\xa0\x80",
    "\xf4\x90\x80\x80",
    "\xe0\x80\x80",
    "",
    "\xf0\x9f\x90\xb3 whale",
    "trunc\xe2\x82",
}

local function sample()
    return {
        time = 1795820400.123,
        method = "GET",
        uri = "/v2/library/alpine/blobs/sha256:abc",
        repository = "library/alpine",
        digest = "sha256:abc",
        status = 200,
        bytes = 3401,
        duration_ms = 1.234,
        cache = "hit",
        upstream = "https://a.example.com",
        remote_addr = "10.0.0.7:51234",
        user_agent = "docker/24.0.7 go/go1.20",
    }
end

local ENTRY_KEYS = {
    "time", "level", "msg", "http.request.method", "http.request.uri", "http.request.remoteaddr",
    "http.request.useragent", "vars.name", "vars.digest", "http.response.status",
    "http.response.written", "http.response.duration", "cache", "upstream",
}

describe("logformat", function()
    local logformat

    before_each(function()
        package.loaded.logformat = nil
        logformat = require("logformat")
    end)

    describe("format_log as text", function()
        before_each(function()
            fake_cache.install({})
        end)

        it("writes Docker Registry's response line", function()
            assert.equals('time="2026-11-27T23:00:00.123Z" level=info msg="response completed" '
                .. "http.request.method=GET http.request.uri=/v2/library/alpine/blobs/sha256:abc "
                .. 'http.request.remoteaddr=10.0.0.7:51234 http.request.useragent="docker/24.0.7 go/go1.20" '
                .. "vars.name=library/alpine vars.digest=sha256:abc http.response.status=200 "
                .. "http.response.written=3401 http.response.duration=1.234ms cache=hit "
                .. "upstream=https://a.example.com", logformat.format_log(sample()))
        end)

        it("leaves out what the entry does not have, and takes the time from cache.now", function()
            local line = logformat.format_log({ method = "HEAD", uri = "/v2/", status = 401, bytes = 0 })
            assert.equals('time="2026-11-27T23:00:00.500Z" level=info msg="response completed" '
                .. "http.request.method=HEAD http.request.uri=/v2/ http.response.status=401 "
                .. "http.response.written=0", line)
        end)

        it("writes the error of a failed request", function()
            local entry = sample()
            entry.cache, entry.status, entry.error = "miss", 502, "upstream https://a.example.com: connection refused"
            local parsed = logfmt.parse(logformat.format_log(entry))
            assert.equals("upstream https://a.example.com: connection refused", logfmt.get(parsed, "error"))
            assert.equals("502", logfmt.get(parsed, "http.response.status"))
            assert.equals("miss", logfmt.get(parsed, "cache"))
        end)

        it("says stale=true and its age for a response served during an outage", function()
            local entry = sample()
            entry.stale, entry.stale_age = "true", 5400
            local line = logformat.format_log(entry)
            assert.truthy(line:find(" upstream=https://a.example.com stale=true stale_age=5400$"), line)
            entry.stale = nil
            assert.falsy(logformat.format_log(entry):find("stale", 1, true))
        end)

        it("says incomplete=true before the error of a response cut short", function()
            local entry = sample()
            entry.status, entry.incomplete, entry.error = 200, "true", "digest mismatch"
            local line = logformat.format_log(entry)
            assert.truthy(line:find(' incomplete=true error="digest mismatch"$'))
            assert.falsy(logformat.format_log(sample()):find("incomplete", 1, true))
        end)

        it("puts the config's log.fields after msg, renaming time, level and msg", function()
            fake_cache.install({ fields = {
                { key = "environment", value = "staging" },
                { key = "msg", value = "x y" },
                { key = "bad key\n", value = "v" },
            } })
            local parsed = logfmt.parse(logformat.format_log(sample()))
            assert.are.same({ "time", "level", "msg", "environment", "fields.msg", "bad_key_" },
                { table.unpack(logfmt.keys(parsed), 1, 6) })
            assert.equals("x y", logfmt.get(parsed, "fields.msg"))
            assert.equals("response completed", logfmt.get(parsed, "msg"))
        end)

        it("cannot be forged by a user agent with a newline", function()
            local entry = sample()
            entry.user_agent = "x\nlevel=error msg=forged"
            local line = logformat.format_log(entry)
            assert.is_nil(line:find("\n", 1, true))
            assert.truthy(line:find('http.request.useragent="x\\nlevel=error msg=forged"', 1, true))
            local parsed = logfmt.parse(line)
            assert.are.same(ENTRY_KEYS, logfmt.keys(parsed))
            assert.equals("info", logfmt.get(parsed, "level"))
        end)

        it("keeps every hostile value inside its own field, byte for byte", function()
            for _, hostile in ipairs(HOSTILE) do
                local entry = sample()
                entry.user_agent, entry.uri = hostile, "/v2/" .. hostile
                local line = logformat.format_log(entry)
                assert.is_nil(line:find("[%z\1-\31\127]"), "raw control byte for " .. hostile)
                local parsed = logfmt.parse(line)
                assert.are.same(ENTRY_KEYS, logfmt.keys(parsed))
                assert.equals(hostile, logfmt.get(parsed, "http.request.useragent"))
                assert.equals("/v2/" .. hostile, logfmt.get(parsed, "http.request.uri"))
            end
        end)

        it("escapes as core/log.c does", function()
            assert.equals('\\"q\\" \\\\ \\n\\r\\t', logformat.escape_text('"q" \\ \n\r\t'))
            assert.equals("\\x01\\x1b\\x7f", logformat.escape_text("\1\27\127"))
            assert.equals("\\xff\\xfe", logformat.escape_text("\xff\xfe"))
            assert.equals("\\xed\\xa0\\x80", logformat.escape_text("\xed\xa0\x80")) -- surrogate
            assert.equals("\\xe0\\x80\\x80", logformat.escape_text("\xe0\x80\x80")) -- overlong
            assert.equals("\\u0085 \\u2028\\u2029", logformat.escape_text("\xc2\x85 \xe2\x80\xa8\xe2\x80\xa9"))
            assert.equals("caf\xc3\xa9 \xf0\x9f\x90\xb3", logformat.escape_text("caf\xc3\xa9 \xf0\x9f\x90\xb3"))
            assert.equals("trunc\\xe2\\x82", logformat.escape_text("trunc\xe2\x82"))
        end)

        it("quotes a value only when it needs it", function()
            local function useragent(value)
                local entry = sample()
                entry.user_agent = value
                return logformat.format_log(entry):match("http%.request%.useragent=(%S+)")
            end
            assert.equals("curl/8.0.1", useragent("curl/8.0.1"))
            assert.equals('""', useragent(""))
            assert.equals('"a', useragent("a b"))
            assert.equals('"a=b"', useragent("a=b"))
        end)
    end)

    describe("format_log as JSON", function()
        before_each(function()
            fake_cache.install({ formatter = "json", fields = { { key = "environment", value = "staging" } } })
        end)

        it("writes one object with the same keys, numbers as numbers", function()
            local line = logformat.format_log(sample())
            assert.equals('{"time":"2026-11-27T23:00:00.123Z","level":"info","msg":"response completed",'
                .. '"environment":"staging","http.request.method":"GET",'
                .. '"http.request.uri":"/v2/library/alpine/blobs/sha256:abc",'
                .. '"http.request.remoteaddr":"10.0.0.7:51234",'
                .. '"http.request.useragent":"docker/24.0.7 go/go1.20","vars.name":"library/alpine",'
                .. '"vars.digest":"sha256:abc","http.response.status":200,"http.response.written":3401,'
                .. '"http.response.duration":"1.234ms","cache":"hit","upstream":"https://a.example.com"}', line)
            local decoded = assert(json.decode(line))
            assert.equals(200, decoded["http.response.status"])
            assert.equals("staging", decoded.environment)
        end)

        it("takes the formatter in any case", function()
            fake_cache.install({ formatter = "JSON" })
            assert.equals("{", logformat.format_log(sample()):sub(1, 1))
        end)

        it("stays valid JSON for hostile values, which decode to themselves", function()
            for _, hostile in ipairs(HOSTILE) do
                local entry = sample()
                entry.user_agent = hostile
                local line = logformat.format_log(entry)
                assert.is_nil(line:find("[%z\1-\31\127]"), "raw control byte for " .. hostile)
                local decoded, _, err = json.decode(line)
                assert.is_nil(err)
                if utf8.len(hostile) then
                    assert.equals(hostile, decoded["http.request.useragent"])
                else -- invalid UTF-8: each bad byte becomes U+FFFD
                    assert.truthy(decoded["http.request.useragent"]:find("\xef\xbf\xbd", 1, true))
                end
            end
        end)

        it("escapes as core/registry.c does", function()
            assert.equals('\\"q\\" \\\\ \\u000a\\u000d\\u0009', logformat.escape_json('"q" \\ \n\r\t'))
            assert.equals("\\u0001\\u007f\\u0085\\u2028", logformat.escape_json("\1\127\xc2\x85\xe2\x80\xa8"))
            assert.equals("\\ufffd\\ufffd", logformat.escape_json("\xff\xfe"))
            assert.equals("\\ufffd", logformat.escape_json("\xef\xbf\xbd"))
            assert.equals("caf\xc3\xa9", logformat.escape_json("caf\xc3\xa9"))
        end)

        it("writes a non-finite number as null", function()
            assert.equals('{"a":null,"b":1.5,"c":true}', logformat.json({ { "a", 0 / 0 }, { "b", 1.5 }, { "c", true } }))
        end)
    end)

    describe("rfc3339", function()
        it("writes UTC with milliseconds", function()
            assert.equals("1970-01-01T00:00:00.000Z", logformat.rfc3339(0))
            assert.equals("2026-11-27T23:00:00.123Z", logformat.rfc3339(1795820400.123))
            assert.equals("2000-02-29T00:00:00.000Z", logformat.rfc3339(951782400))
            assert.equals("2024-02-29T12:00:00.000Z", logformat.rfc3339(1709208000))
            assert.equals("2100-01-01T00:00:00.000Z", logformat.rfc3339(4102444800))
            assert.equals("1969-12-31T00:00:00.000Z", logformat.rfc3339(-86400))
        end)

        it("cuts milliseconds rather than rounding them", function()
            assert.equals("2026-11-27T23:00:00.999Z", logformat.rfc3339(1795820400.9996))
            assert.equals("2026-11-27T23:00:01.000Z", logformat.rfc3339(1795820401))
        end)
    end)

    describe("duration", function()
        it("writes milliseconds below a second and seconds above", function()
            assert.equals("1.234ms", logformat.duration(1.234))
            assert.equals("0.5ms", logformat.duration(0.5))
            assert.equals("0ms", logformat.duration(0))
            assert.equals("999ms", logformat.duration(999))
            assert.equals("1.5s", logformat.duration(1500))
            assert.equals("12s", logformat.duration(12000))
            assert.equals("0ms", logformat.duration(-3))
        end)
    end)
end)
