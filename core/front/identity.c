/*
 * identity.c: who a client is. See identity.h.
 *
 * A check that memory cannot decide is a job: a GET /v2/ at the origin with the client's
 * header, then (Basic meeting a Bearer challenge) a request to the realm, or a token
 * check of auth.token. A cancelled job runs to its end and is freed then, silently.
 */
#include "front/identity.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "access/realm.h"

#define MEMORY_ORIGIN "front-identity"
#define MEMORY_ACTION "signin"

struct identity {
    uv_loop_t *loop;
    struct upstream_pool *pool;
    char *v2_url; /* <origin>/v2/ */
    struct auth_cache *memory;
    struct auth_verifier *verifier;
    unsigned pending;
};

struct identity_job {
    struct identity *id;
    char *header; /* the client's Authorization, NUL-terminated */
    size_t len;
    bool basic;
    bool cancelled;
    struct upstream_req *up;
    struct realm_req *realm;
    struct auth_token_job *token;
    int status;
    struct auth_challenge_params challenge;
    bool has_challenge;
    identity_cb cb;
    void *arg;
    struct identity_verdict verdict;
};

struct identity *identity_new(uv_loop_t *loop, struct upstream_pool *pool, const char *origin_base,
                              struct auth_cache *memory, struct auth_verifier *verifier)
{
    struct identity *id = calloc(1, sizeof(*id));
    if (id == NULL) return NULL;
    size_t n = strlen(origin_base) + 5;
    id->v2_url = malloc(n);
    if (id->v2_url == NULL) {
        free(id);
        return NULL;
    }
    snprintf(id->v2_url, n, "%s/v2/", origin_base);
    id->loop = loop;
    id->pool = pool;
    id->memory = memory;
    id->verifier = verifier;
    return id;
}

void identity_free(struct identity *id)
{
    if (id == NULL) return;
    free(id->v2_url);
    free(id);
}

unsigned identity_pending(const struct identity *id)
{
    return id->pending;
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* The user named by a credential: Basic's user, a token's sub. */
static int user_of(const char *header, size_t len, bool basic, struct identity_verdict *v)
{
    int rc = basic ? auth_basic_user(header, len, v->user, sizeof(v->user))
                   : auth_bearer_subject(header, len, v->user, sizeof(v->user));
    if (rc != 0) {
        v->rc = -EACCES;
        snprintf(v->why, sizeof(v->why), "%s",
                 basic ? "malformed Basic credentials" : "the token names no user (sub)");
    }
    return rc;
}

static void remember(struct identity *id, const char *header, size_t len, bool yes)
{
    if (id->memory != NULL)
        auth_cache_store(id->memory, MEMORY_ORIGIN, header, len, "", 0, MEMORY_ACTION,
                         yes ? 200 : 401, NULL, 0, mono_ms());
}

/* --- Jobs ------------------------------------------------------------------------------- */

static void job_end(struct identity_job *j, int rc, const char *why)
{
    struct identity *id = j->id;
    j->verdict.rc = rc;
    if (rc == 0)
        j->verdict.why[0] = '\0';
    else if (why != NULL)
        snprintf(j->verdict.why, sizeof(j->verdict.why), "%s", why);
    if (rc == 0 || rc == -EACCES) remember(id, j->header, j->len, rc == 0);
    id->pending--;
    if (!j->cancelled) j->cb(j->arg, &j->verdict);
    free(j->header);
    free(j);
}

static void realm_done(void *arg, int err, const struct realm_answer *a)
{
    struct identity_job *j = arg;
    char why[200];
    j->realm = NULL;
    if (err != 0) {
        snprintf(why, sizeof(why), "the origin's token realm could not be asked: %s",
                 uv_strerror(err));
        job_end(j, -EIO, why);
    } else if (a->status == 200) {
        job_end(j, 0, NULL);
    } else if (a->status == 401 || a->status == 403) {
        job_end(j, -EACCES, "the origin's token realm refused the credentials");
    } else {
        snprintf(why, sizeof(why), "the origin's token realm answered %d", a->status);
        job_end(j, -EIO, why);
    }
}

static void origin_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                        int64_t content_length)
{
    struct identity_job *j = ud;
    j->status = status;
    const struct http_header *ch = http_header_find(hdrs, n, "WWW-Authenticate");
    j->has_challenge =
        ch != NULL && auth_challenge_parse(ch->value, ch->value_len, &j->challenge) == 0;
}

static void origin_body(void *ud, const char *data, size_t len) {}

static void origin_done(void *ud, int err)
{
    struct identity_job *j = ud;
    char why[300];
    if (err != 0) {
        snprintf(why, sizeof(why), "the origin could not be asked: %s",
                 upstream_error_message(j->up));
        j->up = NULL;
        job_end(j, -EIO, why);
        return;
    }
    j->up = NULL;
    int st = j->status;
    if (st >= 200 && st < 300) {
        job_end(j, 0, NULL);
        return;
    }
    if (st == 401 && j->basic && j->has_challenge &&
        strcasecmp(j->challenge.scheme, "Bearer") == 0) {
        /* Token auth: the realm decides whether these credentials are a user's. */
        int rc =
            realm_request(j->id->pool, &j->challenge, NULL, j->header, realm_done, j, &j->realm);
        if (rc == 0) return;
        snprintf(why, sizeof(why), "the origin's token realm cannot be asked: %s", uv_strerror(rc));
        job_end(j, -EIO, why);
        return;
    }
    if (st == 401 || st == 403) {
        job_end(j, -EACCES, "the origin refused the credentials");
        return;
    }
    snprintf(why, sizeof(why), "the origin answered %d to GET /v2/", st);
    job_end(j, -EIO, why);
}

static void token_checked(void *arg, const struct auth_token_verdict *v)
{
    struct identity_job *j = arg;
    j->token = NULL;
    if (v->rc == 0)
        job_end(j, 0, NULL);
    else
        job_end(j, -EACCES, v->why);
}

int identity_check(struct identity *id, const char *authorization, size_t len,
                   struct identity_verdict *now, identity_cb cb, void *arg,
                   struct identity_job **job)
{
    memset(now, 0, sizeof(*now));
    if (authorization == NULL || len == 0) {
        now->rc = -ENOENT;
        snprintf(now->why, sizeof(now->why), "no credentials");
        return 0;
    }
    bool basic = len > 6 && strncasecmp(authorization, "Basic ", 6) == 0;
    bool bearer = len > 7 && strncasecmp(authorization, "Bearer ", 7) == 0;
    if ((!basic && !bearer) || len > AUTH_TOKEN_MAX) {
        now->rc = -EACCES;
        snprintf(now->why, sizeof(now->why), "credentials neither Basic nor Bearer");
        return 0;
    }
    if (user_of(authorization, len, basic, now) != 0) return 0;
    int st;
    if (id->memory != NULL && auth_cache_lookup(id->memory, MEMORY_ORIGIN, authorization, len, "",
                                                0, MEMORY_ACTION, mono_ms(), &st, NULL)) {
        now->rc = st == 200 ? 0 : -EACCES;
        snprintf(now->why, sizeof(now->why), "%s",
                 st == 200 ? "" : "credentials refused (remembered)");
        return 0;
    }
    struct identity_job *j = calloc(1, sizeof(*j));
    if (j == NULL || (j->header = malloc(len + 1)) == NULL) {
        free(j);
        return -ENOMEM;
    }
    memcpy(j->header, authorization, len);
    j->header[len] = '\0'; /* (the realm is sent it as a C string) */
    j->len = len;
    j->id = id;
    j->basic = basic;
    j->cb = cb;
    j->arg = arg;
    j->verdict = *now;
    int rc;
    if (bearer && id->verifier != NULL) {
        struct auth_token_query q = {j->header,           len,      "", 0, AUTH_ACTION_SIGNED_IN,
                                     (int64_t)time(NULL), mono_ms()};
        struct auth_token_verdict v;
        rc = auth_token_check(id->verifier, &q, &v, token_checked, j, &j->token);
        if (rc == 0) {
            /* Decided at once (remembered, or refused cheaply). */
            now->rc = v.rc == 0 ? 0 : -EACCES;
            snprintf(now->why, sizeof(now->why), "%s", v.why);
            free(j->header);
            free(j);
            return 0;
        }
        if (rc == AUTH_TOKEN_PENDING) {
            id->pending++;
            *job = j;
            return IDENTITY_PENDING;
        }
    } else {
        char *value = malloc(len + 1);
        rc = value != NULL ? 0 : -ENOMEM;
        if (rc == 0) {
            memcpy(value, authorization, len);
            value[len] = '\0';
            struct upstream_header h = {"Authorization", value, true};
            struct upstream_request_spec spec = {
                .method = "GET", .url = id->v2_url, .headers = &h, .n_headers = 1};
            static const struct upstream_callbacks cbs = {origin_head, origin_body, origin_done};
            rc = upstream_request(id->pool, &spec, &cbs, j, &j->up);
            free(value);
        }
        if (rc == 0) {
            id->pending++;
            *job = j;
            return IDENTITY_PENDING;
        }
    }
    free(j->header);
    free(j);
    return rc < 0 ? rc : -EIO;
}

void identity_job_cancel(struct identity_job *job)
{
    if (job != NULL) job->cancelled = true;
}
