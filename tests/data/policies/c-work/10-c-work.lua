-- Work done inside C library functions, chosen by the blob's digest: each of these ran
-- for seconds to forever without one Lua instruction, so the instruction count alone
-- never stopped them. "fine" is ordinary use of the same functions, on a long subject.
local function catastrophic(n)
    return ("a"):rep(n), ("a*"):rep(n) .. "b"
end

local work = {
    find = function()
        return string.find(catastrophic(20))
    end,
    match = function()
        local s = ("a"):rep(20)
        return s:match(("a-"):rep(20) .. "b")
    end,
    gmatch = function()
        local s, p = catastrophic(20)
        for _ in s:gmatch(p) do
        end
    end,
    gsub = function()
        local s, p = catastrophic(20)
        return s:gsub(p, "")
    end,
    ["pcall-find"] = function()
        -- Each call is cut short; catching that gains nothing.
        while true do
            pcall(string.find, catastrophic(20))
        end
    end,
    ["rep-empty"] = function()
        return string.rep("", math.maxinteger)
    end,
    move = function()
        return table.move({}, 1, 1 << 40, 1, {})
    end,
    insert = function()
        local huge = setmetatable({}, { __len = function() return 1 << 40 end })
        table.insert(huge, 1, "x")
    end,
    ["concat-loop"] = function()
        -- Quadratic: each concatenation copies everything so far.
        local s = ""
        while true do
            s = s .. "x"
        end
    end,
    fine = function()
        local uri = "/v2/" .. ("library/"):rep(1000) .. "alpine/blobs/sha256:" .. ("ab"):rep(32)
        local repository, digest = uri:match("^/v2/(.+)/blobs/([%w:]+)$")
        local words = 0
        for _ in uri:gmatch("[^/]+") do
            words = words + 1
        end
        local escaped = uri:gsub("[/:]", "_")
        assert(#repository == 8006 and #digest == 71 and words == 1004 and #escaped == #uri)
        assert(uri:find("alpine", 1, true) == 8005)
        local parts = {}
        for i = 1, 1000 do
            parts[i] = ("x"):rep(10)
        end
        table.sort(parts)
        return #table.concat(parts, ",")
    end,
}

return {
    blob_ttl = function(blob)
        local result = work[blob.digest]()
        return type(result) == "number" and result or 1
    end,
}
