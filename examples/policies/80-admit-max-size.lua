-- 80-admit-max-size.lua: keep very large blobs out of the cache.
--
-- A blob larger than MAX_BYTES is streamed through to the clients that asked for it
-- (verified against its digest as ever) but not stored: a few huge layers (a CUDA base
-- image, a model baked into an image) would otherwise push out hundreds of small ones
-- that are pulled far more often. The next request for it goes upstream again.
--
-- A blob whose upstream announced no length is stored (it is rare, and the cache caps
-- such a body at 256 MiB anyway). Edit MAX_BYTES to taste.

local MAX_BYTES = 2 * 1024 * 1024 * 1024 -- 2 GiB

return {
    admit = function(blob, req)
        return blob.size == nil or blob.size <= MAX_BYTES
    end,
}
