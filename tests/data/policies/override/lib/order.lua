-- A helper module: in a subdirectory, so the engine does not load it as a policy.
local M = {}

function M.origin_first(upstream)
    local list = { upstream.originhost }
    for _, host in ipairs(upstream.upstreamhosts) do
        list[#list + 1] = host
    end
    return list
end

return M
