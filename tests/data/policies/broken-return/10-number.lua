-- A policy file must return a table of hooks.
local ttl = 60

return ttl
