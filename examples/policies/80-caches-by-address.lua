-- 80-caches-by-address.lua: for the front (the contentcaches middleware). Each blob
-- download of a signed-in user goes to the cache that serves the client's network, the
-- document's "a cache that is geographically closer", without asking the user: the
-- first range in RANGES that holds the client's address names the cache. A client in
-- none of them gets the cache they chose on their profile page, or none.
--
-- Edit RANGES: IPv4 networks in CIDR notation and the name of a registered cache
-- (POST /api/v0/content_caches). A name that is not registered (yet, or any more) is
-- skipped, so the download is never sent to a cache the front does not know. The
-- client's address is the one the front sees: behind a proxy, the proxy's.

local RANGES = {
    { "10.10.0.0/16", "region-us" },
    { "10.20.0.0/16", "region-eu" },
    { "192.168.0.0/16", "region-eu" },
}

-- "a.b.c.d" -> a 32-bit integer, or nil.
local function ipv4(text)
    local a, b, c, d = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then
        return nil
    end
    local n = 0
    for _, part in ipairs({ a, b, c, d }) do
        local v = tonumber(part)
        if v > 255 then
            return nil
        end
        n = n * 256 + v
    end
    return n
end

-- "a.b.c.d/len" -> network and mask as integers, or nil.
local function cidr(text)
    local addr, len = text:match("^([%d%.]+)/(%d+)$")
    local net = addr and ipv4(addr)
    len = tonumber(len)
    if not net or len > 32 then
        return nil
    end
    local mask = len == 0 and 0 or (0xFFFFFFFF << (32 - len)) & 0xFFFFFFFF
    return net & mask, mask
end

local networks = {}
for _, r in ipairs(RANGES) do
    local net, mask = cidr(r[1])
    if net then
        networks[#networks + 1] = { net = net, mask = mask, cache = r[2] }
    else
        cache.log("warn", "80-caches-by-address: " .. r[1] .. " is not an IPv4 network, skipped")
    end
end

-- The client's address from "ip:port" (IPv6 "[...]:port" is not matched).
local function client_address(remote_addr)
    local ip = remote_addr and remote_addr:match("^([%d%.]+):%d+$")
    return ip and ipv4(ip)
end

local function registered(caches, name)
    for _, c in ipairs(caches) do
        if c.name == name then
            return true
        end
    end
    return false
end

return {
    select_cache = function(req, user, caches)
        local addr = client_address(req.remote_addr)
        if addr then
            for _, n in ipairs(networks) do
                if addr & n.mask == n.net and registered(caches, n.cache) then
                    return n.cache
                end
            end
        end
        return user.cache
    end,
}
