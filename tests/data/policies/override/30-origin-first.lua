local order = require("lib.order")

return {
    select_upstream = function(req, upstream)
        return order.origin_first(upstream)
    end,
}
