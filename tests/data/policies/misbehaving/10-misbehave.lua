-- Hooks that fail in the way their argument asks for, and answer normally otherwise.
local function misbehave(how)
    if how == "error" then
        error("policy bug")
    elseif how == "loop" then
        while true do
        end
    elseif how == "pcall-loop" then
        while true do
            pcall(function()
                while true do
                end
            end)
        end
    elseif how == "hog" then
        -- Memory, not work: each new string is one allocation of a copy (string.rep
        -- charges a step per copy it makes, so it is called once).
        local hoard, chunk = {}, string.rep("x", 4096)
        while true do
            hoard[#hoard + 1] = chunk .. #hoard
        end
    elseif how == "bigstring" then
        return string.rep("y", 1 << 30)
    end
    return nil
end

return {
    blob_ttl = function(blob)
        misbehave(blob.digest)
        if blob.digest == "wrong" then
            return "soon"
        elseif blob.digest == "negative" then
            return -1
        end
        return 42
    end,
    select_upstream = function(req, upstream)
        misbehave(req.repository)
        if req.repository == "wrong" then
            return { "https://elsewhere.example.com" }
        elseif req.repository == "empty" then
            return {}
        elseif req.repository == "number" then
            return 7
        end
        return { upstream.originhost }
    end,
    format_log = function(entry)
        misbehave(entry.method)
        if entry.method == "wrong" then
            return { "a table" }
        end
        return "ok " .. entry.method
    end,
    evict = function(candidates, bytes_needed)
        if bytes_needed == 1 then
            return { 1, 2 }
        end
        local list = { "sha256:unknown" }
        for i = #candidates, 1, -1 do
            list[#list + 1] = candidates[i].digest
            list[#list + 1] = candidates[i].digest
        end
        return list
    end,
}
