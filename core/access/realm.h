/*
 * realm.h: asking a token realm for a bearer token, as Docker clients do (the registry's
 * `auth.token` protocol): GET <realm>?service=<service>&scope=<scope> with HTTP Basic
 * credentials (or none), answered 200 {"token": "...", "expires_in": N} ("access_token"
 * is read too). The front uses it to check a user's credentials against an origin with
 * token auth (no scope: does the realm accept them?) and to get tokens for its own
 * pull-only account.
 *
 * The answer's body is read up to REALM_MAX_BODY; the token is given to the callback
 * only, never logged. A function that fails never calls the callback; the callback
 * comes from the loop. Everything runs on the loop's thread.
 */
#ifndef CC_REALM_H
#define CC_REALM_H

#include <stdint.h>

#include "access/auth.h"
#include "net/upstream.h"

#define REALM_MAX_BODY (64 * 1024)
#define REALM_DEFAULT_EXPIRES_S 60 /* when the answer says nothing, as the spec reads */

struct realm_req;

/* What the realm answered: its status and, on 200, the token (valid during the call). */
struct realm_answer {
    int status;
    const char *token; /* NULL unless a 200 carried one */
    int64_t expires_in;
};

/* err 0 with the answer, or a negative error (the realm could not be asked, or its 200
 * was not a token: UV_EPROTO) with answer NULL. */
typedef void (*realm_cb)(void *arg, int err, const struct realm_answer *answer);

/*
 * Asks ch's realm (an absolute http(s) URL, which may hold a query) for a token of ch's
 * service and `scope` (NULL or "": none), with `authorization` ("Basic ...", or NULL for
 * an anonymous token). Returns 0 and *out (valid until the callback returns or
 * realm_cancel), or a negative error (UV_EINVAL for a realm that is no http(s) URL).
 */
int realm_request(struct upstream_pool *pool, const struct auth_challenge_params *ch,
                  const char *scope, const char *authorization, realm_cb cb, void *arg,
                  struct realm_req **out);

/* No callback after this. Safe from the loop at any time but inside the callback. */
void realm_cancel(struct realm_req *req);

#endif
