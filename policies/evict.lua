-- evict.lua: which blobs to delete when the cache needs room.
--
-- Least recently pulled first, until bytes_needed is covered. LRU is simple and fair to
-- recency: what clients pulled lately stays. Its weakness is scans: one job that pulls
-- many images once (a mirror sync, a vulnerability scan of every tag) makes all of them
-- "recent" and flushes the hot set that other clients pull every day. The S3-FIFO-style
-- policy in examples/policies/ resists scans by evicting blobs pulled only once before
-- blobs pulled again.

local M = {}

local function older(a, b)
    local ta, tb = a.last_pulled or 0, b.last_pulled or 0
    if ta ~= tb then
        return ta < tb
    end
    return a.digest < b.digest -- table.sort is not stable: ties in digest order
end

-- evict(candidates, bytes_needed) -> {digest, ...}
-- candidates: a list of {digest, size, last_pulled, created, repositories}.
function M.evict(candidates, bytes_needed)
    local order = {}
    for i = 1, #candidates do
        order[i] = candidates[i]
    end
    table.sort(order, older)

    local victims, freed = {}, 0
    for _, blob in ipairs(order) do
        if freed >= bytes_needed then
            break
        end
        victims[#victims + 1] = blob.digest
        freed = freed + (blob.size or 0)
    end
    return victims
end

return M
