-- Notes that it loaded (files load in byte order of their names).
local seen = require("lib.seen")
seen[#seen + 1] = "10-a"
return {}
