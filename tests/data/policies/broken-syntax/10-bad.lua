return {
    blob_ttl = function(blob)
        return 60 +
    end,
}
