-- paths.lua: puts the repository's policies/ on package.path, so that specs find the
-- policy modules however busted was started (with --lpath as ctest does, or without).
-- Returns { root = the repository root }.

local source = debug.getinfo(1, "S").source
local root = source:match("^@(.+)/spec/helpers/paths%.lua$") or "."

local policies = root .. "/policies/?.lua"
if not (";" .. package.path .. ";"):find(";" .. policies .. ";", 1, true) then
    package.path = policies .. ";" .. package.path
end

return { root = root }
