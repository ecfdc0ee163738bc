/*
 * front.h: the front, the binary's second mode: the registry side of the document, before
 * an origin registry (a config whose middleware.registry names contentcaches).
 *
 * What it answers (README, "The front"):
 *   /v2/...                   relayed to the origin with the client's own credentials,
 *                             pulls and pushes, streamed both ways; the upload URLs the
 *                             origin gives (Location) name the front
 *   GET /v2/<name>/blobs/<d>  of a signed-in user with a cache: 307 to the cache with a
 *                             grant (front/redirect.h); HEAD is answered from the origin
 *   .../blobs/<d>?grant=...   a cache's miss (or a client that followed a redirect here):
 *                             the grant verified with the front's key, the blob fetched
 *                             from the origin with the front's own account
 *                             (front/account.h), the grant not passed on
 *   GET /api/v0/content_caches/grant-key
 *                             the public key that verifies the grants (a JWKS), for
 *                             the caches; anyone may read it
 *   GET /                     the profile page (front/page.h), which uses the API
 *   /api/v0/...               the caches API (front/caches_api.h), its state in SQLite
 *                             under <rootdirectory>/front (front/state.h), with the
 *                             grant key beside it (grant-key.pem)
 *
 * A grant in a request's query is a credential: what the logs show has it redacted.
 *
 * Several loops (the contentcaches options' `workers`, as the cache's): each loop serves
 * on its own thread with its own listener (SO_REUSEPORT), upstream pool, policy engine,
 * sign-in checks, redirects and origin account; they share the state (front/state.h:
 * one database, one mirror, under locks), the memory of decisions (access/auth.h) and
 * the grant key. Loop 0 takes the signals and serves the debug server (app/process.h).
 *
 * Everything else runs on its loop's thread.
 */
#ifndef CC_FRONT_H
#define CC_FRONT_H

#include <stdio.h>

#include "base/config.h"

/* What --check says the front of cfg would do (after the listen address). */
void front_describe(const struct config *cfg, FILE *out);

/*
 * Serves the front of cfg (has_contentcaches) until SIGTERM or SIGINT has drained it.
 * builtin_policies is the built-in policies' directory (NULL: where they are installed).
 * Returns an exit code of process.h.
 */
int front_run(const struct config *cfg, const char *builtin_policies);

#endif
