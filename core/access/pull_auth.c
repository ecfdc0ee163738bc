/*
 * pull_auth.c: a pulling client's credential, and the realm's tokens. See pull_auth.h.
 */
#include "access/pull_auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access/auth.h"
#include "access/realm.h"
#include "registry/registry.h"

struct pull_auth {
    uv_loop_t *loop;
    struct upstream_pool *pool;
    char scope[REGISTRY_NAME_MAX + 32];     /* "repository:<name>:pull" */
    char *authorization;                    /* what is sent, or NULL */
    char *basic;                            /* the credential the realm gets, or NULL */
    bool given_token;                       /* the client's own credential was a token */
    bool token_tried;                       /* the realm was asked after a challenge */
    struct auth_challenge_params challenge; /* the Bearer challenge, once one came */
    uint64_t renew_ms;                      /* uv_now from which a renewal is due, 0: never */
    struct realm_req *req;
    bool renewing; /* req is a renewal */
    pull_auth_cb cb;
    void *arg;
};

struct pull_auth *pull_auth_new(uv_loop_t *loop, struct upstream_pool *pool, const char *repository,
                                const char *authorization)
{
    struct pull_auth *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    a->loop = loop;
    a->pool = pool;
    snprintf(a->scope, sizeof(a->scope), "repository:%s:pull", repository);
    if (authorization != NULL && authorization[0] != '\0') {
        if ((a->authorization = strdup(authorization)) == NULL) {
            free(a);
            return NULL;
        }
        if (strncasecmp(authorization, "Basic ", 6) == 0)
            a->basic = a->authorization;
        else
            a->given_token = true;
    }
    return a;
}

void pull_auth_free(struct pull_auth *a)
{
    if (a == NULL) return;
    pull_auth_cancel(a);
    if (a->basic != a->authorization) free(a->basic);
    free(a->authorization);
    free(a);
}

const char *pull_auth_header(const struct pull_auth *a)
{
    return a->authorization;
}

/* The realm answered: the token is kept (with its renewal time), or the caller is told. */
static void answered(void *arg, int err, const struct realm_answer *answer)
{
    struct pull_auth *a = arg;
    pull_auth_cb cb = a->cb;
    void *cb_arg = a->arg;
    bool renewal = a->renewing;
    char why[200] = "";
    a->req = NULL;
    char *token = NULL;
    if (err == 0 && answer->token != NULL) {
        size_t n = strlen(answer->token) + 8;
        if ((token = malloc(n)) != NULL)
            snprintf(token, n, "Bearer %s", answer->token);
        else
            err = UV_ENOMEM;
    } else if (err == 0) {
        err = -EACCES;
        if (answer->status == 401 || answer->status == 403)
            snprintf(why, sizeof(why), "the registry's token service refused the %s (%d)",
                     a->basic ? "credentials" : "anonymous request", answer->status);
        else
            snprintf(why, sizeof(why), "no token from the registry's token service (%d)",
                     answer->status);
    }
    if (token != NULL) {
        if (a->authorization != a->basic) free(a->authorization);
        a->authorization = token;
        int64_t life = answer->expires_in > 0 ? answer->expires_in : REALM_DEFAULT_EXPIRES_S;
        a->renew_ms = uv_now(a->loop) + (uint64_t)life * 750;
    } else {
        if (why[0] == '\0')
            snprintf(why, sizeof(why), "no token from the registry's token service: %s",
                     uv_strerror(err));
        if (renewal) a->renew_ms = 0; /* the token held goes on; no second try */
    }
    cb(cb_arg, token != NULL ? 0 : err, why);
}

static int ask_realm(struct pull_auth *a, bool renewal, pull_auth_cb cb, void *arg)
{
    if (a->req != NULL) return -EBUSY;
    a->cb = cb;
    a->arg = arg;
    a->renewing = renewal;
    return realm_request(a->pool, &a->challenge, a->scope, a->basic, answered, a, &a->req);
}

int pull_auth_challenged(struct pull_auth *a, const char *challenge, pull_auth_cb cb, void *arg)
{
    struct auth_challenge_params ch;
    if (a->token_tried || a->given_token || challenge == NULL ||
        auth_challenge_parse(challenge, strlen(challenge), &ch) != 0 ||
        strcasecmp(ch.scheme, "Bearer") != 0)
        return -EACCES;
    a->challenge = ch;
    a->token_tried = true;
    return ask_realm(a, false, cb, arg);
}

bool pull_auth_renewal_due(const struct pull_auth *a)
{
    return a->renew_ms != 0 && uv_now(a->loop) >= a->renew_ms;
}

int pull_auth_renew(struct pull_auth *a, pull_auth_cb cb, void *arg)
{
    int rc = a->token_tried ? ask_realm(a, true, cb, arg) : -EINVAL;
    if (rc != 0 && rc != -EBUSY) a->renew_ms = 0;
    return rc;
}

void pull_auth_cancel(struct pull_auth *a)
{
    if (a->req != NULL) realm_cancel(a->req);
    a->req = NULL;
}
