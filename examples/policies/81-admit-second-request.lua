-- 81-admit-second-request.lua: store a blob only when it is asked for a second time.
--
-- Scan resistance at the door: one job that pulls many images once (a mirror sync, a
-- vulnerability scan of every tag) would fill the disk with blobs nobody asks for again.
-- Here the first request for a blob streams it through without storing it; a second
-- request within WINDOW seconds stores it (and every request after that is a hit). The
-- price is one more upstream download for each blob that is used.
--
-- The first requests are remembered in this policy's Lua state (digest -> time), at most
-- MAX_REMEMBERED of them: past that, the oldest half is forgotten. A reload (SIGHUP)
-- forgets them all. With several loops (`workers`), each loop has its own Lua state and
-- remembers the requests it served: a blob is stored at the second request on one loop,
-- so it may be streamed through up to `workers` + 1 times first.

local WINDOW = 3600 -- seconds
local MAX_REMEMBERED = 10000

local first_seen, remembered = {}, 0

-- Forgets the requests older than the window, or the oldest half when that is not enough.
local function prune(now)
    local times = {}
    for digest, t in pairs(first_seen) do
        if now - t > WINDOW then
            first_seen[digest] = nil
            remembered = remembered - 1
        else
            times[#times + 1] = t
        end
    end
    if remembered >= MAX_REMEMBERED then
        table.sort(times)
        local cutoff = times[#times // 2 + 1]
        for digest, t in pairs(first_seen) do
            if t < cutoff then
                first_seen[digest] = nil
                remembered = remembered - 1
            end
        end
    end
    -- Requests that all came at one instant: any half goes.
    for digest in pairs(first_seen) do
        if remembered < MAX_REMEMBERED // 2 then
            break
        end
        first_seen[digest] = nil
        remembered = remembered - 1
    end
end

return {
    admit = function(blob, req)
        local now = cache.now()
        local seen = first_seen[blob.digest]
        if seen ~= nil and now - seen <= WINDOW then
            first_seen[blob.digest] = nil
            remembered = remembered - 1
            return true
        end
        if seen == nil then
            if remembered >= MAX_REMEMBERED then
                prune(now)
            end
            remembered = remembered + 1
        end
        first_seen[blob.digest] = now
        return false
    end,
}
