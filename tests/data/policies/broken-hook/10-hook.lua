return {
    format_log = function(entry)
        return "fine"
    end,
    blob_ttl = 3600,
}
