-- 50-base-image-ttl.lua: keep base images longer than other blobs.
--
-- Base images (the layers every build starts from) are pulled in bursts: a week without a
-- release, then every CI job at once. With a short blobttl they expire between bursts and
-- the next burst goes to the origin. This policy gives the blobs of the repositories below
-- at least BASE_TTL; every other blob keeps the configured blobttl. Without a blobttl the
-- cache keeps blobs anyway, and so does this policy.
--
-- A repository matches an entry when it is the entry ("ubuntu") or lies under it
-- ("library" matches "library/alpine", not "library-tools/x"). A blob matches when any of
-- the repositories it was last pulled from does (blob.repositories; a blob shared by a
-- base image and an application image counts as a base image).
--
-- Install: copy into the directory named by the downstream middleware's `policydir`, then
-- send SIGHUP (or restart).

local ttl = require("ttl")

local BASE_REPOSITORIES = { "library", "base", "ubuntu", "debian" }
local BASE_TTL = 7 * 24 * 3600 -- seconds

local function is_base(repository)
    for _, entry in ipairs(BASE_REPOSITORIES) do
        if repository == entry or repository:sub(1, #entry + 1) == entry .. "/" then
            return true
        end
    end
    return false
end

return {
    blob_ttl = function(blob)
        local default = ttl.blob_ttl(blob)
        if default == nil then
            return nil
        end
        for _, repository in ipairs(blob.repositories or {}) do
            if is_base(repository) then
                return math.max(default, BASE_TTL)
            end
        end
        return default
    end,
}
