-- admit.lua: whether a blob that a client's request makes the cache fetch is stored.
--
-- The default stores every blob it fetches (the cache's job). A drop-in may keep some out:
-- they are then streamed through to the clients that asked, verified as ever, and the next
-- request fetches them again. examples/policies/ has two: one keeps very large blobs out,
-- one stores a blob only when it is asked for a second time within a window (so a one-time
-- scan does not fill the disk).

local M = {}

-- admit(blob, req) -> true to store, false to stream it through only
-- blob: {digest, size (nil when the upstream announced no length), repositories = {...}}
-- req: {method, repository, reference, digest, kind}
function M.admit(blob, req)
    return true
end

return M
