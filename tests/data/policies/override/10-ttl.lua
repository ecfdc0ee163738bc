-- Overridden by 20-ttl-and-log.lua, which comes later in byte order.
return {
    blob_ttl = function(blob)
        return 60
    end,
}
