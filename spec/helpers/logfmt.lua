-- logfmt.lua: a strict parser of logrus text lines, to check what a line says rather than
-- how it looks. parse(line) -> { {key, value}, ... }, with quoted values unescaped (\" \\
-- \n \r \t \xNN \uXXXX); it raises an error on anything else, such as a second line.

local M = {}

local SIMPLE = { n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\" }

local function quoted(line, i)
    local out = {}
    while true do
        local c = line:sub(i, i)
        if c == "" then
            error("unterminated quoted value")
        elseif c == '"' then
            return table.concat(out), i + 1
        elseif c == "\\" then
            local d = line:sub(i + 1, i + 1)
            if SIMPLE[d] then
                out[#out + 1] = SIMPLE[d]
                i = i + 2
            elseif d == "x" then
                out[#out + 1] = string.char(tonumber(line:sub(i + 2, i + 3), 16))
                i = i + 4
            elseif d == "u" then
                out[#out + 1] = utf8.char(tonumber(line:sub(i + 2, i + 5), 16))
                i = i + 6
            else
                error("unknown escape \\" .. d)
            end
        elseif c:byte() < 0x20 or c:byte() == 0x7f then
            error("raw control byte in a quoted value")
        else
            out[#out + 1] = c
            i = i + 1
        end
    end
end

function M.parse(line)
    local list, i, n = {}, 1, #line
    while i <= n do
        local key, at = line:match("^([A-Za-z0-9._/:@+%-]+)=()", i)
        if not key then
            error("no key at byte " .. i .. " of " .. line)
        end
        local value
        if line:sub(at, at) == '"' then
            value, i = quoted(line, at + 1)
        else
            value, i = line:match("^([A-Za-z0-9._/:@+%-]+)()", at)
            if not value then
                error("bad bare value at byte " .. at .. " of " .. line)
            end
        end
        list[#list + 1] = { key, value }
        if i <= n then
            if line:sub(i, i) ~= " " then
                error("junk at byte " .. i .. " of " .. line)
            end
            i = i + 1
        end
    end
    return list
end

-- The keys of a parsed line, in order.
function M.keys(list)
    local keys = {}
    for i, pair in ipairs(list) do
        keys[i] = pair[1]
    end
    return keys
end

-- The value of key in a parsed line.
function M.get(list, key)
    for _, pair in ipairs(list) do
        if pair[1] == key then
            return pair[2]
        end
    end
    return nil
end

return M
