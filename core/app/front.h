/*
 * front.h: the front, the binary's second mode: the registry side of the document, before
 * an origin registry (a config whose middleware.registry names contentcaches).
 *
 * What it answers (README, "The front"):
 *   /v2/...                   relayed to the origin with the client's own credentials,
 *                             pulls and pushes, streamed both ways; the upload URLs the
 *                             origin gives (Location) name the front
 *   /api/v0/...               the caches API (front/caches_api.h), its state in SQLite
 *                             under <rootdirectory>/front (front/state.h)
 *
 * Everything runs on the loop's thread.
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
