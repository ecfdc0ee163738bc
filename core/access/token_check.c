/*
 * token_check.c: bearer tokens checked for the server (auth.h, "checking tokens for the
 * server"): remembered outcomes first, the cheap checks on the loop, the signatures on
 * libuv's thread pool in a FIFO lane, one token at a time.
 *
 * Memory: two facts per token in the decision cache, under the origin "local-token":
 *   (token, "", "signature")  200: its signature verified (allow TTL, never past exp);
 *                             401: refused before the claims (deny TTL), with the reason
 *                             kept where the cache keeps a challenge
 *   (token, repo, action)     200: allowed (allow TTL, never past exp)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access/auth.h"
#include "access/jwt.h"

#define MEMORY_ORIGIN "local-token"
#define SIGNATURE_ACTION "signature"
#define REMEMBERED_SUFFIX " (remembered)"

struct token_lane {
    uv_loop_t *loop;
    struct auth_cache *memory;
    struct auth_verifier *verifier;
    struct auth_token_job *head, *tail; /* waiting for a lane */
    unsigned running;
};

struct auth_token_job {
    struct token_lane *lane;
    uv_work_t work;
    struct jwt_check *check;
    struct auth_token_job *next;
    char *header; /* copies of the query's strings */
    char *repo;
    size_t len, repo_len;
    char action[32];
    int64_t now_s;
    uint64_t now_ms;
    auth_token_cb cb;
    void *arg;
    bool running, cancelled;
    struct auth_token_verdict verdict;
};

int auth_token_verifier_attach(struct auth_verifier *v, uv_loop_t *loop, struct auth_cache *memory)
{
    struct token_lane **slot = jwt_verifier_lane(v);
    if (*slot == NULL) *slot = calloc(1, sizeof(**slot));
    if (*slot == NULL) return -ENOMEM;
    (*slot)->loop = loop;
    (*slot)->memory = memory;
    (*slot)->verifier = v;
    return 0;
}

void token_lane_free(struct token_lane *lane)
{
    /* Every job holds a request that is gone by now (see auth_token_verifier_attach). */
    free(lane);
}

/* ---- memory -------------------------------------------------------------------------------- */

static void remember_signature(struct token_lane *lane, const struct auth_token_query *q, int rc,
                               const char *why)
{
    if (lane == NULL || lane->memory == NULL || rc == -ENOMEM) return;
    auth_cache_store(lane->memory, MEMORY_ORIGIN, q->header, q->len, "", 0, SIGNATURE_ACTION,
                     rc == 0 ? 200 : 401, rc == 0 ? NULL : why, rc == 0 ? 0 : strlen(why),
                     q->now_ms);
}

/* The claims of a token whose signature verified; an allowance is remembered. */
static void finish_claims(struct auth_verifier *v, struct token_lane *lane,
                          const struct auth_token_query *q, struct auth_token_verdict *out)
{
    out->rc = jwt_check_claims(v, q->header, q->len, q->repo, q->repo_len, q->action, q->now_s,
                               out->why, sizeof(out->why));
    if (out->rc == 0) {
        out->why[0] = '\0';
        if (lane != NULL && lane->memory != NULL)
            auth_cache_store(lane->memory, MEMORY_ORIGIN, q->header, q->len, q->repo, q->repo_len,
                             q->action, 200, NULL, 0, q->now_ms);
    }
}

/* Decides q from memory alone when it can: true with *out set. */
static bool from_memory(struct auth_verifier *v, struct token_lane *lane,
                        const struct auth_token_query *q, struct auth_token_verdict *out)
{
    int st;
    const char *reason;
    if (lane == NULL || lane->memory == NULL) return false;
    if (auth_cache_lookup(lane->memory, MEMORY_ORIGIN, q->header, q->len, q->repo, q->repo_len,
                          q->action, q->now_ms, &st, NULL) &&
        st == 200) {
        out->rc = 0;
        out->remembered = true;
        out->why[0] = '\0';
        return true;
    }
    if (!auth_cache_lookup(lane->memory, MEMORY_ORIGIN, q->header, q->len, "", 0, SIGNATURE_ACTION,
                           q->now_ms, &st, &reason))
        return false;
    out->remembered = true;
    if (st == 200) {
        finish_claims(v, lane, q, out);
        return true;
    }
    out->rc = -EPERM;
    snprintf(out->why, sizeof(out->why), "%.*s%s",
             (int)(sizeof(out->why) - sizeof(REMEMBERED_SUFFIX)),
             reason != NULL ? reason : "refused", REMEMBERED_SUFFIX);
    return true;
}

/* ---- the lane ------------------------------------------------------------------------------ */

static struct auth_token_query job_query(const struct auth_token_job *j)
{
    return (struct auth_token_query){j->header, j->len,   j->repo,  j->repo_len,
                                     j->action, j->now_s, j->now_ms};
}

static void job_free(struct auth_token_job *j)
{
    jwt_check_free(j->check);
    free(j->header);
    free(j->repo);
    free(j);
}

static void work_cb(uv_work_t *w)
{
    struct auth_token_job *j = w->data;
    j->verdict.rc =
        jwt_check_signatures(j->lane->verifier, j->check, j->verdict.why, sizeof(j->verdict.why));
}

static void after_work_cb(uv_work_t *w, int status);

/* Starts waiting jobs while a lane is free; a job whose token was decided meanwhile (the
 * same token, asked twice) is answered from memory instead. Called on the loop, never
 * from inside auth_token_check. */
static void lane_pump(struct token_lane *lane)
{
    while (lane->head != NULL && lane->running < AUTH_TOKEN_LANES) {
        struct auth_token_job *j = lane->head;
        lane->head = j->next;
        if (lane->head == NULL) lane->tail = NULL;
        struct auth_token_query q = job_query(j);
        if (from_memory(lane->verifier, lane, &q, &j->verdict)) {
            j->cb(j->arg, &j->verdict);
            job_free(j);
            continue;
        }
        j->running = true;
        j->work.data = j;
        int rc = uv_queue_work(lane->loop, &j->work, work_cb, after_work_cb);
        if (rc != 0) {
            j->verdict.rc = -ENOMEM;
            snprintf(j->verdict.why, sizeof(j->verdict.why), "cannot queue the check: %s",
                     uv_strerror(rc));
            j->cb(j->arg, &j->verdict);
            job_free(j);
            continue;
        }
        lane->running++;
    }
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct auth_token_job *j = w->data;
    struct token_lane *lane = j->lane;
    struct auth_token_query q = job_query(j);
    lane->running--;
    remember_signature(lane, &q, j->verdict.rc, j->verdict.why);
    if (j->verdict.rc == 0) finish_claims(lane->verifier, lane, &q, &j->verdict);
    if (!j->cancelled) j->cb(j->arg, &j->verdict);
    job_free(j);
    lane_pump(lane);
}

void auth_token_job_cancel(struct auth_token_job *j)
{
    if (j->running) {
        j->cancelled = true; /* after_work_cb frees it */
        return;
    }
    struct auth_token_job **link = &j->lane->head, *prev = NULL;
    while (*link != j) {
        prev = *link;
        link = &(*link)->next;
    }
    *link = j->next;
    if (j->lane->tail == j) j->lane->tail = prev;
    job_free(j);
}

/* ---- the check ----------------------------------------------------------------------------- */

int auth_token_check(struct auth_verifier *v, const struct auth_token_query *query,
                     struct auth_token_verdict *now, auth_token_cb cb, void *arg,
                     struct auth_token_job **job)
{
    struct token_lane *lane = *jwt_verifier_lane(v);
    struct auth_token_query with_action = *query;
    if (with_action.action == NULL) with_action.action = "pull";
    const struct auth_token_query *q = &with_action;
    memset(now, 0, sizeof(*now));
    *job = NULL;
    if (q->len > AUTH_TOKEN_MAX) {
        now->rc = -EMSGSIZE;
        snprintf(now->why, sizeof(now->why), "the token is longer than 8 KiB");
        return 0;
    }
    if (from_memory(v, lane, q, now)) return 0;

    struct jwt_check *check;
    now->rc = jwt_check_begin(v, q->header, q->len, q->now_s, &check, now->why, sizeof(now->why));
    if (now->rc != 0) {
        remember_signature(lane, q, now->rc, now->why);
        return 0;
    }
    if (lane == NULL) {
        /* Not attached: everything here and now (tests, tools). */
        now->rc = jwt_check_signatures(v, check, now->why, sizeof(now->why));
        jwt_check_free(check);
        if (now->rc == 0) finish_claims(v, lane, q, now);
        return 0;
    }

    struct auth_token_job *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->header = malloc(q->len + 1);
        j->repo = malloc(q->repo_len + 1);
    }
    const char *action = q->action;
    if (j == NULL || j->header == NULL || j->repo == NULL || strlen(action) >= sizeof(j->action)) {
        if (j != NULL) job_free(j);
        jwt_check_free(check);
        now->rc = -ENOMEM;
        snprintf(now->why, sizeof(now->why), "out of memory");
        return 0;
    }
    if (q->len > 0) memcpy(j->header, q->header, q->len);
    if (q->repo_len > 0) memcpy(j->repo, q->repo, q->repo_len);
    j->len = q->len;
    j->repo_len = q->repo_len;
    memcpy(j->action, action, strlen(action) + 1);
    j->now_s = q->now_s;
    j->now_ms = q->now_ms;
    j->lane = lane;
    j->check = check;
    j->cb = cb;
    j->arg = arg;
    if (lane->head == NULL && lane->running < AUTH_TOKEN_LANES) {
        /* A free lane and nobody waiting: start it here (lane_pump would call callbacks). */
        j->running = true;
        j->work.data = j;
        int rc = uv_queue_work(lane->loop, &j->work, work_cb, after_work_cb);
        if (rc != 0) {
            job_free(j);
            now->rc = -ENOMEM;
            snprintf(now->why, sizeof(now->why), "cannot queue the check: %s", uv_strerror(rc));
            return 0;
        }
        lane->running++;
    } else if (lane->tail != NULL) {
        lane->tail->next = j;
        lane->tail = j;
    } else {
        lane->head = lane->tail = j;
    }
    *job = j;
    return AUTH_TOKEN_PENDING;
}
