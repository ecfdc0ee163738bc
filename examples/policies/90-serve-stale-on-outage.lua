-- 90-serve-stale-on-outage.lua: keep pulls working from the cache's disk while the
-- origin is down.
--
-- When every upstream fails (refused, timed out, 5xx), the default answers 503. This
-- policy answers from what the cache holds instead:
--   * a manifest by digest, or a blob, whenever the cache holds it (content addressed by
--     digest cannot be stale);
--   * a tag, with the digest the origin last gave for it, when that answer is at most
--     MAX_TAG_AGE old (a tag may have moved since: the log line says stale=true and how
--     old the answer was);
-- and only to clients whose credential the origin accepted for that repository at most
-- MAX_AUTH_AGE ago (its last answer, kept on disk as a hash). With auth.token configured
-- the cache verifies tokens itself, and no remembered answer is needed. A client the
-- origin refused gets nothing, whatever its age: the cache enforces that even without this
-- policy's say.
--
-- `/v2/` (the API version check clients make first) is answered too, so clients get as far
-- as the manifest.

local MAX_TAG_AGE = 24 * 3600 -- seconds
local MAX_AUTH_AGE = 3600 -- seconds

local function credential_ok(auth)
    if auth == nil or not auth.allowed then
        return false
    end
    return auth.verified_here or auth.age <= MAX_AUTH_AGE
end

return {
    on_upstream_failure = function(req, known)
        if req.kind == "base" then
            return true
        end
        if not credential_ok(known.auth) then
            return false
        end
        if req.kind == "manifest" then
            local m = known.manifest
            if m == nil or not m.stored or not m.in_repository then
                return false
            end
            if known.tag ~= nil then
                return known.tag.age <= MAX_TAG_AGE
            end
            return true
        elseif req.kind == "blob" then
            local b = known.blob
            return b ~= nil and b.stored and b.in_repository
        end
        return false
    end,
}
