/*
 * pull_auth.h: the credential a registry client pulls one repository with, held as Docker
 * clients hold it: the Authorization it sends (a Basic credential, a bearer token, or
 * none) and, after the registry's Bearer challenge, a pull token from its realm (realm.h)
 * asked for with the Basic credential (or anonymously), renewed before it expires.
 *
 * A function that fails never calls its callback, and none calls one before it returns:
 * callbacks come from the loop. One request to the realm at a time. Credentials and
 * tokens are never logged, and never in a `why`. Everything runs on the loop's thread;
 * the pool must outlive the object.
 */
#ifndef CC_PULL_AUTH_H
#define CC_PULL_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "net/upstream.h"

struct pull_auth;

/* err 0: pull_auth_header now gives the realm's token. Else a negative error, and why a
 * sentence ("the registry's token service refused the credentials (401)"), valid during
 * the call. */
typedef void (*pull_auth_cb)(void *arg, int err, const char *why);

/* authorization: what the client was given ("Basic ...", "Bearer ..."), or NULL; copied.
 * NULL on allocation failure. */
struct pull_auth *pull_auth_new(uv_loop_t *loop, struct upstream_pool *pool, const char *repository,
                                const char *authorization);
/* Cancels a request to the realm (no callback). NULL is a no-op. */
void pull_auth_free(struct pull_auth *a);

/* The Authorization value to send, or NULL for none. Valid until the next token. */
const char *pull_auth_header(const struct pull_auth *a);

/*
 * The registry answered 401 with `challenge` (its WWW-Authenticate value). A Bearer
 * challenge that no token was asked for yet: asks the realm for a pull token of the
 * repository and returns 0 (cb tells how it went). Otherwise -EACCES (no token can help:
 * not a Bearer challenge, a token was refused already, or the credential given was a
 * token), or the realm request's error.
 */
int pull_auth_challenged(struct pull_auth *a, const char *challenge, pull_auth_cb cb, void *arg);

/* True when the token held is past three quarters of its life (the realm's expires_in):
 * requests about to start should wait for pull_auth_renew. */
bool pull_auth_renewal_due(const struct pull_auth *a);

/*
 * Asks the realm for a new token. 0 (cb comes), or an error: -EBUSY while a request to
 * the realm is under way, or the request's. When the renewal fails (then or in cb), the
 * token held goes on serving and no renewal is due any more.
 */
int pull_auth_renew(struct pull_auth *a, pull_auth_cb cb, void *arg);

/* Cancels the request to the realm under way, if any: no callback comes. */
void pull_auth_cancel(struct pull_auth *a);

#endif
