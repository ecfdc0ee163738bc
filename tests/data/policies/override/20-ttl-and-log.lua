return {
    blob_ttl = function(blob)
        return 120
    end,
    format_log = function(entry)
        return "custom " .. entry.method .. " " .. entry.uri
    end,
}
