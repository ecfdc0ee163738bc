/*
 * identity.h: who a client of the front is, from its Authorization header.
 *
 *   Basic user:password   `user`, when the origin accepts the credentials: a GET /v2/ at
 *                         the origin with them answers 2xx, or, when it answers with a
 *                         Bearer challenge (token auth), its realm gives a token for
 *                         them (no scope).
 *   Bearer <token>        with auth.token configured, the token verified here as the
 *                         cache verifies them (signature, issuer, audience, times; no
 *                         access claim needed); without it, a GET /v2/ at the origin
 *                         with the token answers 2xx. The user is the token's `sub`.
 *
 * Answers are remembered by a SHA-256 of the whole header (the decision cache of auth.h:
 * a yes for its allow TTL, a no for its deny TTL), so a signed-in client costs the origin
 * one request per credential and minute. No credential is logged or kept otherwise.
 *
 * A function that returns an error never calls its callback, and none is called from
 * inside a function: callbacks come from the loop. Loop thread only.
 */
#ifndef CC_FRONT_IDENTITY_H
#define CC_FRONT_IDENTITY_H

#include <stddef.h>
#include <uv.h>

#include "access/auth.h"
#include "front/state.h"
#include "net/upstream.h"

#define IDENTITY_PENDING 1 /* identity_check: the callback will tell */

struct identity;
struct identity_job;

struct identity_verdict {
    /* 0: signed in as user; -ENOENT: no credentials; -EACCES: credentials refused;
     * -EIO: the origin (or its realm) could not be asked. */
    int rc;
    char user[FRONT_USER_MAX + 1];
    char why[200]; /* a refusal's or failure's reason, for the log; "" when signed in */
};

typedef void (*identity_cb)(void *arg, const struct identity_verdict *v);

/*
 * origin_base is the origin's base URL ("http://host:port[/prefix]", copied). memory and
 * verifier (auth.token's, attached to the loop: auth.h) may be NULL. Everything must
 * outlive the object. Returns NULL when memory runs out.
 */
struct identity *identity_new(uv_loop_t *loop, struct upstream_pool *pool, const char *origin_base,
                              struct auth_cache *memory, struct auth_verifier *verifier);
/* No check may be pending. */
void identity_free(struct identity *id);

/*
 * Decides who authorization[0..len) (NULL/0 when the request had none) is. Returns 0 with
 * the verdict in *now, or IDENTITY_PENDING: then cb(arg, verdict) comes from the loop
 * unless identity_job_cancel(*job) is called first.
 */
int identity_check(struct identity *id, const char *authorization, size_t len,
                   struct identity_verdict *now, identity_cb cb, void *arg,
                   struct identity_job **job);

void identity_job_cancel(struct identity_job *job);

/* Checks pending (for a drain, and tests). */
unsigned identity_pending(const struct identity *id);

#endif
