-- ttl.lua: how long a blob that is not pulled again stays in the cache.
--
-- The downstream middleware's blobttl, in seconds: the core counts it from the blob's
-- last pull, so a blob pulled every day with a 24h TTL never expires. Without a blobttl
-- the cache keeps blobs until evict makes room (nil: no TTL).

local M = {}

-- blob_ttl(blob) -> seconds or nil
-- blob: {digest, size, last_pulled, created (or nil), repositories = {...}}.
function M.blob_ttl(blob)
    return cache.config.blobttl
end

-- The time at which a blob expires under ttl_seconds (nil: never). For policies that
-- want to reason about expiry; the core does this arithmetic itself.
function M.expires_at(blob, ttl_seconds)
    if ttl_seconds == nil then
        return nil
    end
    return blob.last_pulled + ttl_seconds
end

return M
