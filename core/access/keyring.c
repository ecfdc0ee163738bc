/*
 * keyring.c: the front's keys, fetched. See keyring.h.
 *
 * Waiters are a list; the fetch's end (or a 0 ms timer, when no fetch is due) answers all
 * of them. A cancelled waiter stays in the list, marked, and is freed when the list is
 * answered.
 */
#include "access/keyring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/bytes.h"
#include "base/log.h"
#include "net/chain.h"

struct keyring_wait {
    struct keyring_wait *next;
    keyring_cb cb;
    void *arg;
    bool cancelled;
};

struct keyring {
    uv_loop_t *loop;
    struct upstream_pool *pool;
    struct grant_key keys[KEYRING_MAX_KEYS];
    size_t n_keys;
    struct chain_req *fetch;
    int fetch_status;
    char *body;
    size_t body_len, body_cap;
    bool body_too_big;
    uint64_t last_fetch_ms; /* when the last fetch started; 0: never */
    struct keyring_wait *waiters;
    uv_timer_t answer; /* answers the waiters from the loop when no fetch is due */
    bool closing;
};

struct keyring *keyring_new(uv_loop_t *loop, struct upstream_pool *pool)
{
    struct keyring *kr = calloc(1, sizeof(*kr));
    if (kr == NULL) return NULL;
    kr->loop = loop;
    kr->pool = pool;
    uv_timer_init(loop, &kr->answer);
    kr->answer.data = kr;
    uv_unref((uv_handle_t *)&kr->answer);
    return kr;
}

static void free_waiters(struct keyring *kr)
{
    while (kr->waiters != NULL) {
        struct keyring_wait *w = kr->waiters;
        kr->waiters = w->next;
        free(w);
    }
}

static void ring_closed(uv_handle_t *h)
{
    struct keyring *kr = h->data;
    free(kr->body);
    free(kr);
}

void keyring_free(struct keyring *kr)
{
    if (kr == NULL) return;
    if (kr->fetch != NULL) chain_cancel(kr->fetch);
    free_waiters(kr);
    uv_close((uv_handle_t *)&kr->answer, ring_closed);
}

const struct grant_key *keyring_find(const struct keyring *kr, const char *kid)
{
    for (size_t i = 0; i < kr->n_keys; i++)
        if (strcmp(kr->keys[i].kid, kid) == 0) return &kr->keys[i];
    return NULL;
}

size_t keyring_size(const struct keyring *kr)
{
    return kr->n_keys;
}

/* Answers every waiter with err. */
static void answer_all(struct keyring *kr, int err)
{
    struct keyring_wait *list = kr->waiters;
    kr->waiters = NULL;
    while (list != NULL) {
        struct keyring_wait *w = list;
        list = w->next;
        if (!w->cancelled) w->cb(w->arg, err);
        free(w);
    }
}

static void on_answer_timer(uv_timer_t *t)
{
    struct keyring *kr = t->data;
    if (kr->fetch == NULL) answer_all(kr, 0);
}

static void fetch_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                       int64_t content_length)
{
    struct keyring *kr = ud;
    kr->fetch_status = status;
}

static void fetch_body(void *ud, const char *data, size_t len)
{
    struct keyring *kr = ud;
    if (kr->body_len + len > KEYRING_MAX_BODY ||
        bytes_append(&kr->body, &kr->body_len, &kr->body_cap, data, len, 1024) != 0)
        kr->body_too_big = true;
}

static void fetch_done(void *ud, int err)
{
    struct keyring *kr = ud;
    struct grant_key keys[KEYRING_MAX_KEYS];
    size_t n = 0;
    if (err == 0 && kr->fetch_status != 200) err = UV_EPROTO;
    if (err == 0 && (kr->body_too_big || kr->body == NULL ||
                     grant_jwks_read(kr->body, kr->body_len, keys, KEYRING_MAX_KEYS, &n) != 0))
        err = UV_EPROTO;
    if (err == 0) {
        memcpy(kr->keys, keys, n * sizeof(*keys));
        kr->n_keys = n;
        log_msg(LOG_INFO, "grant keys: %zu from %s", n, chain_base(kr->fetch));
    } else {
        log_msg(LOG_WARN, "grant keys: cannot fetch them: %s",
                kr->fetch_status != 0 && kr->fetch_status != 200 ? "not a 200"
                : err == UV_EPROTO                               ? "not a JWKS"
                                                                 : chain_error_message(kr->fetch));
    }
    kr->fetch = NULL;
    kr->body_len = 0;
    kr->body_too_big = false;
    answer_all(kr, err);
}

int keyring_refresh(struct keyring *kr, const char *const *bases, size_t n, keyring_cb cb,
                    void *arg, struct keyring_wait **wait)
{
    struct keyring_wait *w = calloc(1, sizeof(*w));
    if (w == NULL) return -ENOMEM;
    w->cb = cb;
    w->arg = arg;
    uint64_t now = uv_hrtime() / 1000000u;
    bool due = kr->last_fetch_ms == 0 || now - kr->last_fetch_ms >= KEYRING_REFRESH_MIN_MS;
    if (kr->fetch == NULL && due) {
        struct chain_spec spec = {
            .method = "GET",
            .bases = bases,
            .n_bases = n,
            .target = GRANT_KEYS_PATH,
            .max_redirects = 3,
        };
        static const struct upstream_callbacks cbs = {fetch_head, fetch_body, fetch_done};
        kr->fetch_status = 0;
        int rc = chain_request(kr->pool, &spec, &cbs, kr, &kr->fetch);
        if (rc != 0) {
            free(w);
            return rc;
        }
        kr->last_fetch_ms = now;
    } else if (kr->fetch == NULL) {
        uv_timer_start(&kr->answer, on_answer_timer, 0, 0);
    }
    w->next = kr->waiters;
    kr->waiters = w;
    *wait = w;
    return 0;
}

void keyring_wait_cancel(struct keyring_wait *w)
{
    if (w != NULL) w->cancelled = true;
}

int keyring_add(struct keyring *kr, const struct grant_key *key)
{
    if (kr->n_keys == KEYRING_MAX_KEYS) return -ENOSPC;
    kr->keys[kr->n_keys++] = *key;
    return 0;
}

/* --- Verifying --------------------------------------------------------------------------- */

struct keyring_check {
    struct keyring *kr;
    char **bases;
    size_t n_bases;
    char *token, *repo, *digest;
    size_t len, repo_len, digest_len;
    char kid[AUTH_KID_SIZE];
    struct grant_key key; /* a copy: a refresh may replace the ring meanwhile */
    struct keyring_wait *wait;
    uv_work_t work;
    keyring_check_cb cb;
    void *arg;
    bool cancelled, refreshed;
    struct keyring_verdict verdict;
};

static void check_free(struct keyring_check *c)
{
    for (size_t i = 0; i < c->n_bases; i++)
        free(c->bases[i]);
    free(c->bases);
    free(c->token);
    free(c->repo);
    free(c->digest);
    free(c);
}

static void check_end(struct keyring_check *c, int rc, const char *why)
{
    if (why != NULL) {
        c->verdict.rc = rc;
        snprintf(c->verdict.why, sizeof(c->verdict.why), "%s", why);
    }
    c->verdict.status = c->verdict.rc == 0 ? 200 : grant_status(c->verdict.rc);
    if (!c->cancelled) c->cb(c->arg, &c->verdict);
    check_free(c);
}

static void check_work(uv_work_t *w)
{
    struct keyring_check *c = w->data;
    c->verdict.rc = grant_verify(&c->key, c->token, c->len, c->repo, c->repo_len, c->digest,
                                 c->digest_len, (int64_t)time(NULL), &c->verdict.claims,
                                 c->verdict.why, sizeof(c->verdict.why));
}

static void check_after(uv_work_t *w, int status)
{
    struct keyring_check *c = w->data;
    if (status != 0) {
        check_end(c, -EIO, "the grant could not be verified");
        return;
    }
    check_end(c, c->verdict.rc, NULL);
}

/* A verdict decided on the loop is still told from the loop, after the pool's turn. */
static void check_nothing(uv_work_t *w) {}

static int check_defer(struct keyring_check *c)
{
    c->work.data = c;
    return uv_queue_work(c->kr->loop, &c->work, check_nothing, check_after);
}

/* The key is known: the signature and the claims on the thread pool. */
static void check_with_key(struct keyring_check *c)
{
    const struct grant_key *k = keyring_find(c->kr, c->kid);
    if (k == NULL) {
        check_end(c, -EPERM, "the grant names a key the front does not have");
        return;
    }
    c->key = *k;
    c->work.data = c;
    if (uv_queue_work(c->kr->loop, &c->work, check_work, check_after) != 0)
        check_end(c, -EIO, "the grant could not be verified");
}

static void check_refreshed(void *arg, int err)
{
    struct keyring_check *c = arg;
    c->wait = NULL;
    check_with_key(c);
}

int keyring_verify(struct keyring *kr, const char *const *bases, size_t n_bases, const char *token,
                   size_t len, const char *repo, size_t repo_len, const char *digest,
                   size_t digest_len, keyring_check_cb cb, void *arg, struct keyring_check **check)
{
    struct keyring_check *c = calloc(1, sizeof(*c));
    if (c == NULL) return -ENOMEM;
    c->kr = kr;
    c->cb = cb;
    c->arg = arg;
    c->token = strndup(token, len);
    c->repo = strndup(repo, repo_len);
    c->digest = strndup(digest, digest_len);
    c->bases = calloc(n_bases ? n_bases : 1, sizeof(*c->bases));
    bool ok = c->token && c->repo && c->digest && c->bases;
    for (size_t i = 0; ok && i < n_bases; i++) {
        c->bases[i] = strdup(bases[i]);
        ok = c->bases[i] != NULL;
        c->n_bases += ok;
    }
    if (!ok) {
        check_free(c);
        return -ENOMEM;
    }
    c->len = len;
    c->repo_len = repo_len;
    c->digest_len = digest_len;
    *check = c;
    int rc;
    if (grant_kid(token, len, c->kid) != 0) {
        c->verdict.rc = -EINVAL;
        snprintf(c->verdict.why, sizeof(c->verdict.why), "not a grant");
        rc = check_defer(c);
    } else if (keyring_find(kr, c->kid) != NULL) {
        c->key = *keyring_find(kr, c->kid);
        c->work.data = c;
        rc = uv_queue_work(kr->loop, &c->work, check_work, check_after);
    } else if (n_bases > 0 && keyring_refresh(kr, (const char *const *)c->bases, c->n_bases,
                                              check_refreshed, c, &c->wait) == 0) {
        rc = 0;
    } else {
        c->verdict.rc = -EPERM;
        snprintf(c->verdict.why, sizeof(c->verdict.why),
                 "the grant names a key the front does not have");
        rc = check_defer(c);
    }
    if (rc != 0) {
        check_free(c);
        return rc;
    }
    return 0;
}

void keyring_check_cancel(struct keyring_check *c)
{
    if (c == NULL) return;
    c->cancelled = true;
    if (c->wait != NULL) {
        keyring_wait_cancel(c->wait);
        check_free(c);
    }
}
