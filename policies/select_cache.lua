-- select_cache.lua: the front's choice of cache for a blob download (the document's
-- "users configure which cache to pull from"): the cache the user chose on their
-- profile page, or none. A drop-in may choose otherwise (by the client's address, say:
-- examples/policies/80-caches-by-address.lua); nil means no redirect.

local M = {}

-- select_cache(req, user, caches) -> a cache's name, or nil
-- req: {method, repository, digest, kind, remote_addr}; user: {name, cache}; caches:
-- { {id, name, host}, ... }, the registered caches.
function M.select_cache(req, user, caches)
    return user.cache
end

return M
