-- upstream.lua: which base URLs a request goes to, in order.
--
-- The upstreamhosts of the request's upstreams entry in round-robin order, then the
-- originhost as the last resort: the cache fails over down the list. With hosts A and B
-- the first call gives {A, B, origin}, the second {B, A, origin}, the third {A, B,
-- origin} again. Each upstreams entry has its own cursor, advanced once per call.
--
-- The cursor of an entry of the config is the host's cache.turn(index): one count for the
-- whole process, whatever loop (Lua state) serves the request, kept across a reload
-- (SIGHUP). Without cache.turn (a spec's fake host, or a hand-made entry without an
-- index) the cursors live in this module, in the Lua state: a reload starts them again.

local M = {}

-- Per upstreams entry: the position in upstreamhosts to start the next list with.
local cursors = {}

-- The entry's key for its cursor: its position in the config when the host passes it,
-- else its originhost (a spec's hand-made table).
local function entry_key(upstream)
    return upstream.index or upstream.originhost
end

-- select_upstream(req, upstream) -> {base URL, ...}
-- req: {method, repository, reference, digest, kind}; upstream: {index, originhost,
-- upstreamhosts = {...}}, as in cache.config.upstreams.
function M.select_upstream(req, upstream)
    local hosts = upstream.upstreamhosts or {}
    local n = #hosts
    local order = {}

    if n > 0 then
        local key = entry_key(upstream)
        local turn = upstream.index and cache and cache.turn and cache.turn(upstream.index)
        local first
        if turn then
            first = (turn - 1) % n + 1
        else
            first = cursors[key] or 1
            if first > n then
                first = 1
            end
        end
        for i = 0, n - 1 do
            order[#order + 1] = hosts[(first - 1 + i) % n + 1]
        end
        cursors[key] = first % n + 1
    end
    order[#order + 1] = upstream.originhost
    return order
end

return M
