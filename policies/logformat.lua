-- logformat.lua: the access-log line.
--
-- Docker Registry's "response completed" line, as logrus writes it:
--   time="2026-11-27T23:00:00.123Z" level=info msg="response completed"
--   http.request.method=GET http.request.uri="/v2/library/alpine/blobs/sha256:..."
--   http.request.remoteaddr="10.0.0.7:51234" http.request.useragent="docker/24.0.7"
--   vars.name=library/alpine vars.digest=sha256:... http.response.status=200
--   http.response.written=3401 http.response.duration=1.234ms cache=hit
--   upstream=https://dtr.example.com
-- (one line), or one JSON object with the same keys when cache.config.log.formatter is
-- "json". The config's log.fields follow msg, as on the diagnostic lines (a field named
-- time, level or msg is written as fields.time, as logrus does). Keys without a value
-- are left out.
--
-- Escaping follows the core's (log_append_kv and the JSON escaping of core/log.c), so
-- nothing a client sends (a user agent with a newline, quotes, backslashes) can end the
-- line or forge a field:
--   text: a value is bare when it is made of [A-Za-z0-9._/:@+-] and not empty; else it is
--         quoted, with \" \\ \n \r \t, \xNN for other control bytes and invalid UTF-8,
--         \uXXXX for the C1 controls and U+2028/U+2029. Other bytes of a key become '_'.
--   json: \" and \\, \u00XX for control bytes, DEL and C1, \u2028/\u2029, and \ufffd for
--         each byte of invalid UTF-8.
-- Entries never carry a credential (no Authorization header, token or password): the core
-- does not put one in, and a policy should not add one.
--
-- The pieces are exported for drop-ins that want their own line: pairs, text, json,
-- escape_text, escape_json, rfc3339, duration.

local M = {}

local byte, char, find, format, sub = string.byte, string.char, string.find, string.format,
    string.sub

local SAFE_VALUE = "^[A-Za-z0-9._/:@+%-]+$"
local UNSAFE_KEY_BYTE = "[^A-Za-z0-9._/:@+%-]"
local NEEDS_ESCAPE = "[%c\"\\\128-\255]"

-- One UTF-8 sequence at s[i..n]: its length and code point, or nil when the bytes there are
-- not valid UTF-8 (overlong, surrogate, past U+10FFFF, truncated, stray continuation).
local function utf8_decode(s, i, n)
    local c = byte(s, i)
    if c < 0x80 then
        return 1, c
    end
    local len, cp, lo, hi = nil, nil, 0x80, 0xbf
    if c >= 0xc2 and c <= 0xdf then
        len, cp = 2, c & 0x1f
    elseif c >= 0xe0 and c <= 0xef then
        len, cp = 3, c & 0x0f
        if c == 0xe0 then
            lo = 0xa0
        elseif c == 0xed then
            hi = 0x9f
        end
    elseif c >= 0xf0 and c <= 0xf4 then
        len, cp = 4, c & 0x07
        if c == 0xf0 then
            lo = 0x90
        elseif c == 0xf4 then
            hi = 0x8f
        end
    else
        return nil
    end
    if i + len - 1 > n then
        return nil
    end
    local c2 = byte(s, i + 1)
    if c2 < lo or c2 > hi then
        return nil
    end
    for k = 1, len - 1 do
        local b = byte(s, i + k)
        if b & 0xc0 ~= 0x80 then
            return nil
        end
        cp = (cp << 6) | (b & 0x3f)
    end
    return len, cp
end

-- Escapes s with escape_at(s, i, n, out) for each byte that needs it; the runs in between
-- are copied as they are. escape_at appends to out and returns the next position.
local function escape_with(s, escape_at)
    if not find(s, NEEDS_ESCAPE) then
        return s
    end
    local out, i, n = {}, 1, #s
    while i <= n do
        local at = find(s, NEEDS_ESCAPE, i)
        if at == nil then
            out[#out + 1] = sub(s, i)
            break
        end
        if at > i then
            out[#out + 1] = sub(s, i, at - 1)
        end
        i = escape_at(s, at, n, out)
    end
    return table.concat(out)
end

local TEXT_SHORT = { [34] = '\\"', [92] = "\\\\", [10] = "\\n", [13] = "\\r", [9] = "\\t" }

local function text_escape_at(s, i, n, out)
    local c = byte(s, i)
    if TEXT_SHORT[c] then
        out[#out + 1] = TEXT_SHORT[c]
        return i + 1
    end
    if c < 0x80 then -- another control byte, or DEL
        out[#out + 1] = format("\\x%02x", c)
        return i + 1
    end
    local len, cp = utf8_decode(s, i, n)
    if len == nil then
        out[#out + 1] = format("\\x%02x", c)
        return i + 1
    end
    if cp <= 0x9f or cp == 0x2028 or cp == 0x2029 then
        out[#out + 1] = format("\\u%04x", cp)
    else
        out[#out + 1] = sub(s, i, i + len - 1)
    end
    return i + len
end

local function json_escape_at(s, i, n, out)
    local len, cp = utf8_decode(s, i, n)
    if len == nil then
        len, cp = 1, 0xfffd
    end
    if cp == 34 or cp == 92 then
        out[#out + 1] = "\\" .. char(cp)
    elseif cp < 0x20 or (cp >= 0x7f and cp <= 0x9f) or cp == 0x2028 or cp == 0x2029
        or cp == 0xfffd then
        out[#out + 1] = format("\\u%04x", cp)
    else
        out[#out + 1] = sub(s, i, i + len - 1)
    end
    return i + len
end

-- The inside of a quoted text value.
function M.escape_text(s)
    return escape_with(s, text_escape_at)
end

-- The inside of a JSON string.
function M.escape_json(s)
    return escape_with(s, json_escape_at)
end

-- A number as text: integers without a fraction, others as Lua writes them.
local function number_text(v)
    if math.type(v) == "float" and v == math.floor(v) and v > -2 ^ 63 and v < 2 ^ 63 then
        return format("%d", v)
    end
    return tostring(v)
end

-- RFC 3339 UTC with milliseconds, "2026-11-27T23:00:00.123Z", for t seconds since the
-- epoch (os.date is not in the sandbox). Milliseconds are cut, not rounded, as core/log.c
-- does.
function M.rfc3339(t)
    local us = math.floor(t * 1e6 + 0.5)
    local secs, ms = us // 1000000, us % 1000000 // 1000
    local days, rem = secs // 86400, secs % 86400
    -- Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    local z = days + 719468
    local era = z // 146097
    local doe = z - era * 146097
    local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    local mp = (5 * doy + 2) // 153
    local day = doy - (153 * mp + 2) // 5 + 1
    local month = mp < 10 and mp + 3 or mp - 9
    local year = yoe + era * 400 + (month <= 2 and 1 or 0)
    return format("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, month, day, rem // 3600,
        rem % 3600 // 60, rem % 60, ms)
end

-- A duration as Go writes one, in ms below a second, else in s: "1.234ms", "2.5s", "0ms".
function M.duration(ms)
    if ms ~= ms or ms < 0 then
        ms = 0
    end
    local value, unit = ms, "ms"
    if ms >= 1000 then
        value, unit = ms / 1000, "s"
    end
    local text = format("%.6f", value):gsub("0+$", ""):gsub("%.$", "")
    return text .. unit
end

-- Keys as written in the text format: bytes outside the safe set become '_'. Keys repeat
-- on every line, so each is worked out once.
local text_keys = setmetatable({}, {
    __index = function(keys, key)
        local safe = key:gsub(UNSAFE_KEY_BYTE, "_")
        keys[key] = safe
        return safe
    end,
})

-- key=value in the text format; always_quote for time, as logrus writes it.
local function text_pair(key, value, always_quote)
    key = text_keys[key]
    if type(value) == "number" then
        value = number_text(value)
    elseif type(value) ~= "string" then
        value = tostring(value)
    end
    if not always_quote and find(value, SAFE_VALUE) then
        return key .. "=" .. value
    end
    return key .. '="' .. M.escape_text(value) .. '"'
end

local function json_value(value)
    local kind = type(value)
    if kind == "number" then
        if value ~= value or value == math.huge or value == -math.huge then
            return "null"
        end
        return number_text(value)
    elseif kind == "boolean" then
        return tostring(value)
    end
    return '"' .. M.escape_json(tostring(value)) .. '"'
end

local function config_fields()
    local log = cache.config.log
    return log and log.fields or {}
end

local RESERVED = { time = true, level = true, msg = true }

-- The (key, value) pairs of an entry's line, in order: time, level, msg, the config's
-- fields, then the entry's. Values are strings or numbers.
function M.pairs(entry)
    local list = {}
    local function add(key, value)
        if value ~= nil then
            list[#list + 1] = { key, value }
        end
    end

    add("time", M.rfc3339(entry.time or cache.now()))
    add("level", "info")
    add("msg", "response completed")
    for _, field in ipairs(config_fields()) do
        add(RESERVED[field.key] and "fields." .. field.key or field.key, field.value)
    end
    add("http.request.method", entry.method)
    add("http.request.uri", entry.uri)
    add("http.request.remoteaddr", entry.remote_addr)
    add("http.request.useragent", entry.user_agent)
    add("vars.name", entry.repository)
    add("vars.digest", entry.digest)
    add("http.response.status", entry.status)
    add("http.response.written", entry.bytes)
    add("http.response.duration", entry.duration_ms and M.duration(entry.duration_ms))
    add("cache", entry.cache)
    add("upstream", entry.upstream)
    add("stale", entry.stale)
    add("stale_age", entry.stale and entry.stale_age)
    add("incomplete", entry.incomplete)
    add("error", entry.error)
    return list
end

-- The text line of a list of pairs.
function M.text(list)
    local parts = {}
    for i, pair in ipairs(list) do
        parts[i] = text_pair(pair[1], pair[2], pair[1] == "time")
    end
    return table.concat(parts, " ")
end

-- The JSON object of a list of pairs (numbers stay numbers).
function M.json(list)
    local parts = {}
    for i, pair in ipairs(list) do
        parts[i] = '"' .. M.escape_json(pair[1]) .. '":' .. json_value(pair[2])
    end
    return "{" .. table.concat(parts, ",") .. "}"
end

local function json_wanted()
    local log = cache.config.log
    return log ~= nil and type(log.formatter) == "string" and log.formatter:lower() == "json"
end

-- format_log(entry) -> the line
-- entry: {time, method, uri, repository, digest, status, bytes, duration_ms, cache,
-- upstream, remote_addr, user_agent, stale ("true" when it was served from what the cache
-- held while every upstream failed) and stale_age (whole seconds), incomplete ("true"
-- when the response was cut short), error}, any of them possibly nil.
function M.format_log(entry)
    local list = M.pairs(entry)
    if json_wanted() then
        return M.json(list)
    end
    return M.text(list)
end

return M
