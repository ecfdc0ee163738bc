-- outage.lua: what the cache answers when every upstream of a request fails (refused,
-- timed out, or a 5xx), from what it holds.
--
-- The default serves nothing stale: the client gets a clear 503 UNAVAILABLE naming the
-- upstream, at once, as the document's "always the correct image" asks. A drop-in may
-- answer from the cache's disk instead (examples/policies/90-serve-stale-on-outage.lua
-- serves tags up to a day old and digests whenever held, to clients the origin said yes
-- to within the hour). Whatever a policy answers, the cache never serves what it does not
-- hold and have linked in the repository, nor to a credential the origin refused or never
-- answered (tokens verified by the cache itself, with auth.token, need no answer).

local M = {}

-- on_upstream_failure(req, known) -> true to serve what is held, false for the error
-- req: {method, repository, reference, digest, kind}
-- known: {upstream, error, tag = {digest, age}, manifest = {digest, stored, in_repository,
-- blobs_stored}, blob = {digest, stored, in_repository}, auth = {allowed, age,
-- verified_here}}, each part nil when the cache knows nothing of it (lua/policy.h).
function M.on_upstream_failure(req, known)
    return false
end

return M
