-- 70-s3fifo-evict.lua: scan-resistant eviction in the spirit of S3-FIFO.
--
-- S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023)
-- sends new objects to a small FIFO queue of about 10% of the cache; those not accessed
-- again by the time they leave it are evicted, the others move to the main queue. Most
-- objects are never accessed twice, so one scan of cold data passes through the small
-- queue and leaves the hot set in the main queue alone, where plain LRU (the default
-- evict) would flush it.
--
-- The hook sees the candidates only when room is needed, with how often each was pulled
-- since it was stored (`pulls`, counted by the cache) and when it was stored (`created`);
-- it rebuilds the queues from those:
--   small queue   blobs pulled at most once since they were stored (one-hit wonders)
--   main queue    blobs pulled again
-- and deletes, until bytes_needed is covered:
--   1. one-hit blobs, oldest first, except the newest SMALL_SHARE of the candidates'
--      bytes (the small queue proper: new blobs get the chance to be pulled again);
--   2. blobs pulled again, least recently pulled first;
--   3. the newest one-hit blobs, oldest first.
-- A candidate without `pulls` (an older cache) has an unknown history: it goes to the main
-- queue, so without `pulls` this policy is the default LRU.

local SMALL_SHARE = 0.10

-- Pulled at most once since it was stored (a blob without `pulls` is not known to be).
local function one_hit(blob)
    return blob.pulls ~= nil and blob.pulls <= 1
end

local function by(field)
    return function(a, b)
        local x, y = a[field] or 0, b[field] or 0
        if x ~= y then
            return x < y
        end
        return a.digest < b.digest
    end
end

return {
    evict = function(candidates, bytes_needed)
        local once, again, total = {}, {}, 0
        for _, blob in ipairs(candidates) do
            total = total + (blob.size or 0)
            if one_hit(blob) then
                once[#once + 1] = blob
            else
                again[#again + 1] = blob
            end
        end
        table.sort(once, by("created"))
        table.sort(again, by("last_pulled"))

        -- once[split + 1 ..]: the newest one-hit blobs, up to SMALL_SHARE of all bytes.
        local split, young_bytes = #once, 0
        while split >= 1 and young_bytes + (once[split].size or 0) <= total * SMALL_SHARE do
            young_bytes = young_bytes + (once[split].size or 0)
            split = split - 1
        end

        local victims, freed = {}, 0
        local function take(queue, first, last)
            for i = first, last do
                if freed >= bytes_needed then
                    return
                end
                victims[#victims + 1] = queue[i].digest
                freed = freed + (queue[i].size or 0)
            end
        end
        take(once, 1, split)
        take(again, 1, #again)
        take(once, split + 1, #once)
        return victims
    end,
}
