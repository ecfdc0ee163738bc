/*
 * account.c: the front's own account at the origin. See account.h.
 *
 * A job waits for the origin's kind of authentication (one probe, which every job that
 * comes meanwhile joins) and then, with token auth, for its repository's token from the
 * realm. A cancelled job is freed when what it waits for is over.
 */
#include "front/account.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access/auth.h"
#include "access/realm.h"
#include "base/base64.h"
#include "base/log.h"
#include "registry/registry.h"

#define TOKEN_MARGIN_MS 10000

enum origin_mode { MODE_UNKNOWN, MODE_PROBING, MODE_BASIC, MODE_TOKEN };

struct token_entry {
    char repo[REGISTRY_NAME_MAX + 1];
    char *value; /* "Bearer <token>" */
    uint64_t expires_ms, used_ms;
};

struct account_job {
    struct origin_account *a;
    struct account_job *next; /* waiting for the probe */
    char repo[REGISTRY_NAME_MAX + 1];
    struct realm_req *realm;
    account_cb cb;
    void *arg;
    bool cancelled;
};

/* The tokens, shared by the loops' accounts (account.h). */
struct account_tokens {
    pthread_mutex_t lock;
    struct token_entry tokens[ACCOUNT_TOKENS];
};

struct origin_account {
    struct account_tokens *shared;
    char *held; /* the last token found, copied out of the table (origin_account_get's *now) */
    uv_loop_t *loop;
    struct upstream_pool *pool;
    char *v2_url;
    char *basic; /* "Basic ...", NULL: anonymous */
    enum origin_mode mode;
    struct auth_challenge_params challenge; /* MODE_TOKEN: the realm and service */
    struct upstream_req *probe;
    int probe_status;
    bool probe_bearer;
    struct account_job *waiting;
};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

struct account_tokens *account_tokens_new(void)
{
    struct account_tokens *t = calloc(1, sizeof(*t));
    if (t != NULL && pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

void account_tokens_free(struct account_tokens *t)
{
    if (t == NULL) return;
    for (size_t i = 0; i < ACCOUNT_TOKENS; i++)
        free(t->tokens[i].value);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

struct origin_account *origin_account_new(uv_loop_t *loop, struct upstream_pool *pool,
                                          const char *origin_base, const char *username,
                                          const char *password, struct account_tokens *tokens)
{
    struct origin_account *a = calloc(1, sizeof(*a));
    if (a == NULL) return NULL;
    a->shared = tokens;
    a->loop = loop;
    a->pool = pool;
    size_t n = strlen(origin_base) + 5;
    a->v2_url = malloc(n);
    if (a->v2_url != NULL) snprintf(a->v2_url, n, "%s/v2/", origin_base);
    if (username != NULL) {
        size_t ul = strlen(username), pl = strlen(password ? password : "");
        char *plain = malloc(ul + pl + 2);
        size_t cap = base64_encoded_len(ul + pl + 1, false) + 8;
        a->basic = malloc(cap);
        if (plain != NULL && a->basic != NULL) {
            snprintf(plain, ul + pl + 2, "%s:%s", username, password ? password : "");
            memcpy(a->basic, "Basic ", 6);
            base64_encode((const unsigned char *)plain, ul + pl + 1, false, a->basic + 6, cap - 6);
        } else {
            free(a->basic);
            a->basic = NULL;
            free(a->v2_url);
            a->v2_url = NULL;
        }
        free(plain);
    }
    if (a->v2_url == NULL) {
        origin_account_free(a);
        return NULL;
    }
    a->mode = a->basic != NULL ? MODE_UNKNOWN : MODE_BASIC;
    return a;
}

void origin_account_free(struct origin_account *a)
{
    if (a == NULL) return;
    free(a->held);
    free(a->basic);
    free(a->v2_url);
    free(a);
}

/* --- Tokens ------------------------------------------------------------------------------- */

/* The token kept for repo, copied into a->held (valid until the next call), or NULL. */
static const char *token_find(struct origin_account *a, const char *repo)
{
    struct account_tokens *shared = a->shared;
    uint64_t now = mono_ms();
    char *copy = NULL;
    pthread_mutex_lock(&shared->lock);
    for (size_t i = 0; copy == NULL && i < ACCOUNT_TOKENS; i++) {
        struct token_entry *t = &shared->tokens[i];
        if (t->value != NULL && strcmp(t->repo, repo) == 0) {
            if (t->expires_ms > now) {
                t->used_ms = now;
                copy = strdup(t->value);
                break;
            }
            free(t->value);
            t->value = NULL;
        }
    }
    pthread_mutex_unlock(&shared->lock);
    free(a->held);
    a->held = copy;
    return copy;
}

static void token_store(struct origin_account *a, const char *repo, const char *token,
                        int64_t expires_in)
{
    size_t n = strlen(token) + 8;
    char *value = malloc(n);
    if (value == NULL) return;
    snprintf(value, n, "Bearer %s", token);
    uint64_t now = mono_ms(), life = (uint64_t)expires_in * 1000u;
    struct account_tokens *shared = a->shared;
    pthread_mutex_lock(&shared->lock);
    struct token_entry *slot = &shared->tokens[0];
    for (size_t i = 0; i < ACCOUNT_TOKENS; i++) {
        if (shared->tokens[i].value == NULL) {
            slot = &shared->tokens[i];
            break;
        }
        if (shared->tokens[i].used_ms < slot->used_ms) slot = &shared->tokens[i];
    }
    free(slot->value);
    slot->value = value;
    snprintf(slot->repo, sizeof(slot->repo), "%s", repo);
    slot->expires_ms = now + (life > TOKEN_MARGIN_MS ? life - TOKEN_MARGIN_MS : life / 2);
    slot->used_ms = now;
    pthread_mutex_unlock(&shared->lock);
}

/* --- Jobs ------------------------------------------------------------------------------- */

static void job_end(struct account_job *j, int err, const char *value)
{
    if (!j->cancelled) j->cb(j->arg, err, value);
    free(j);
}

static void realm_done(void *arg, int err, const struct realm_answer *ans)
{
    struct account_job *j = arg;
    j->realm = NULL;
    if (err != 0) {
        log_msg(LOG_WARN, "the front's account: the origin's realm could not be asked: %s",
                uv_strerror(err));
        job_end(j, -EIO, NULL);
        return;
    }
    if (ans->status != 200 || ans->token == NULL) {
        log_msg(LOG_WARN, "the front's account: the origin's realm answered %d for %s", ans->status,
                j->repo);
        job_end(j, ans->status == 401 || ans->status == 403 ? -EACCES : -EIO, NULL);
        return;
    }
    token_store(j->a, j->repo, ans->token, ans->expires_in);
    const char *kept = token_find(j->a, j->repo);
    if (kept != NULL) {
        job_end(j, 0, kept);
        return;
    }
    /* (no room to keep it: use it once) */
    size_t n = strlen(ans->token) + 8;
    char *value = malloc(n);
    if (value == NULL) {
        job_end(j, -EIO, NULL);
        return;
    }
    snprintf(value, n, "Bearer %s", ans->token);
    job_end(j, 0, value);
    free(value);
}

/* The origin's kind is known: the job's answer, or its token request. */
static void job_go(struct account_job *j)
{
    struct origin_account *a = j->a;
    if (a->mode == MODE_BASIC) {
        job_end(j, 0, a->basic);
        return;
    }
    const char *kept = token_find(a, j->repo);
    if (kept != NULL) {
        job_end(j, 0, kept);
        return;
    }
    char scope[REGISTRY_NAME_MAX + 32];
    snprintf(scope, sizeof(scope), "repository:%s:pull", j->repo);
    int rc = realm_request(a->pool, &a->challenge, scope, a->basic, realm_done, j, &j->realm);
    if (rc != 0) job_end(j, -EIO, NULL);
}

static void probe_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                       int64_t content_length)
{
    struct origin_account *a = ud;
    a->probe_status = status;
    const struct http_header *ch = http_header_find(hdrs, n, "WWW-Authenticate");
    a->probe_bearer = ch != NULL &&
                      auth_challenge_parse(ch->value, ch->value_len, &a->challenge) == 0 &&
                      strcasecmp(a->challenge.scheme, "Bearer") == 0;
}

static void probe_body(void *ud, const char *data, size_t len) {}

static void probe_done(void *ud, int err)
{
    struct origin_account *a = ud;
    a->probe = NULL;
    int st = err == 0 ? a->probe_status : 0;
    int fail = 0;
    if (st == 401 && a->probe_bearer) {
        a->mode = MODE_TOKEN;
        log_msg(LOG_INFO, "the front's account: the origin uses token auth (realm %s)",
                a->challenge.realm);
    } else if (st >= 200 && st < 300) {
        a->mode = MODE_BASIC;
    } else if (st == 401 || st == 403) {
        a->mode = MODE_UNKNOWN;
        log_msg(LOG_ERROR, "the front's account: the origin refused its credentials (%d)", st);
        fail = -EACCES;
    } else {
        a->mode = MODE_UNKNOWN;
        log_msg(LOG_WARN, "the front's account: cannot ask the origin: %s",
                err ? uv_strerror(err) : "an unexpected answer");
        fail = -EIO;
    }
    struct account_job *list = a->waiting;
    a->waiting = NULL;
    while (list != NULL) {
        struct account_job *j = list;
        list = j->next;
        if (fail != 0 || j->cancelled)
            job_end(j, fail, NULL);
        else
            job_go(j);
    }
}

int origin_account_get(struct origin_account *a, const char *repo, const char **now, account_cb cb,
                       void *arg, struct account_job **job)
{
    *now = NULL;
    if (a->basic == NULL) return 0; /* anonymous */
    if (a->mode == MODE_BASIC) {
        *now = a->basic;
        return 0;
    }
    if (a->mode == MODE_TOKEN) {
        if ((*now = token_find(a, repo)) != NULL) return 0;
    }
    struct account_job *j = calloc(1, sizeof(*j));
    if (j == NULL) return -ENOMEM;
    j->a = a;
    j->cb = cb;
    j->arg = arg;
    snprintf(j->repo, sizeof(j->repo), "%s", repo);
    if (a->mode == MODE_TOKEN) {
        char scope[REGISTRY_NAME_MAX + 32];
        snprintf(scope, sizeof(scope), "repository:%s:pull", repo);
        int rc = realm_request(a->pool, &a->challenge, scope, a->basic, realm_done, j, &j->realm);
        if (rc != 0) {
            free(j);
            return rc;
        }
        *job = j;
        return ACCOUNT_PENDING;
    }
    if (a->mode == MODE_UNKNOWN) {
        struct upstream_header h = {"Authorization", a->basic, true};
        struct upstream_request_spec spec = {
            .method = "GET", .url = a->v2_url, .headers = &h, .n_headers = 1};
        static const struct upstream_callbacks cbs = {probe_head, probe_body, probe_done};
        a->probe_status = 0;
        int rc = upstream_request(a->pool, &spec, &cbs, a, &a->probe);
        if (rc != 0) {
            free(j);
            return rc;
        }
        a->mode = MODE_PROBING;
    }
    j->next = a->waiting;
    a->waiting = j;
    *job = j;
    return ACCOUNT_PENDING;
}

void account_job_cancel(struct account_job *job)
{
    if (job != NULL) job->cancelled = true;
}
