-- Every route a policy could take to a __gc finalizer, chosen by the blob's digest. Lua
-- runs finalizers with hooks off: a looping one would never be stopped by the budget.
local function forever()
    while true do
    end
end

return {
    blob_ttl = function(blob)
        local how = blob.digest
        if how == "gc" then
            -- The plain way: refused by setmetatable.
            setmetatable({}, { __gc = forever })
            collectgarbage()
        elseif how == "gc-false" then
            -- __gc present but false marks the object; a function set later would run.
            local mt = { __gc = false }
            local t = setmetatable({}, mt)
            mt.__gc = forever
            t = nil
            collectgarbage()
        elseif how == "gc-later" then
            -- __gc added after setmetatable: Lua never marked the object, so it is
            -- collected without a call (allowed, and harmless).
            local mt = {}
            local t = setmetatable({}, mt)
            mt.__gc = forever
            rawset(mt, "__gc", forever)
            t = nil
            collectgarbage()
            collectgarbage()
            return 7
        elseif how == "gc-pcall" then
            -- Catching the refusal leaves no finalizer behind.
            pcall(setmetatable, {}, { __gc = forever })
            collectgarbage()
            return 8
        end
        return 1
    end,
}
