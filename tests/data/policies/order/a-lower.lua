-- Notes that it loaded (files load in byte order of their names).
local seen = require("lib.seen")
seen[#seen + 1] = "a-lower"
return {}
