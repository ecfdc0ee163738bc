/*
 * redirect.c: who, which cache, may they, the grant, the 307. See redirect.h.
 */
#include "front/redirect.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/log.h"

struct redirect_service {
    struct redirect_opts o;
    char *origin_base;
    char *origin_key;
    struct redirect_stats stats;
    unsigned in_flight;
};

struct redirect_req {
    struct redirect_service *rs;
    struct http_exchange *x;
    struct registry_route route;
    char repo[REGISTRY_NAME_MAX + 1];
    char digest[8 + REGISTRY_REFERENCE_MAX];
    const char *credential; /* the exchange's Authorization value */
    size_t credential_len;
    bool need_credential; /* the HEAD's answer decides the credential too */
    struct identity_job *job;
    struct upstream_req *head;
    int head_status;
    char user[FRONT_USER_MAX + 1];
    struct front_cache cache; /* a copy: a write may change the state meanwhile */
    uv_work_t sign_work;
    bool signing;
    int sign_rc;
    char grant[GRANT_MAX];
    bool gone;
};

struct redirect_service *redirect_service_new(const struct redirect_opts *opts)
{
    struct redirect_service *rs = calloc(1, sizeof(*rs));
    if (rs == NULL) return NULL;
    rs->o = *opts;
    rs->origin_base = strdup(opts->origin_base);
    rs->origin_key = strdup(opts->origin_key);
    if (rs->origin_base == NULL || rs->origin_key == NULL) {
        redirect_service_free(rs);
        return NULL;
    }
    return rs;
}

void redirect_service_free(struct redirect_service *rs)
{
    if (rs == NULL) return;
    free(rs->origin_base);
    free(rs->origin_key);
    free(rs);
}

const struct redirect_stats *redirect_stats(const struct redirect_service *rs)
{
    return &rs->stats;
}

unsigned redirect_in_flight(const struct redirect_service *rs)
{
    return rs->in_flight;
}

void redirect_render_metrics(const void *redirect_service, struct textbuf *out)
{
    const struct redirect_stats *st = redirect_stats(redirect_service);
    static const char name[] = "content_cache_front_blob_gets_total";
    metrics_help(out, name, "counter",
                 "Blob GETs of clients at the front, by outcome: redirected to a cache (307) "
                 "or relayed from the origin.");
    metrics_labelled(out, name, "outcome", "redirected", st->redirected);
    metrics_labelled(out, name, "outcome", "relayed", st->relayed);
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void req_free(struct redirect_req *r)
{
    r->rs->in_flight--;
    free(r);
}

/* Not redirected: the relay answers as the origin does. */
static void fall_back(struct redirect_req *r)
{
    struct redirect_service *rs = r->rs;
    struct http_exchange *x = r->x;
    struct registry_route route = r->route;
    http_exchange_on_gone(x, NULL, NULL);
    rs->stats.relayed++;
    req_free(r);
    rs->o.fallback(rs->o.ud, x, &route);
}

/* A client that went away: the exchange ends, quietly. */
static void end_gone(struct redirect_req *r)
{
    http_respond_end(r->x);
    req_free(r);
}

/* --- 5. The grant and the 307 --------------------------------------------------------- */

static void sign_work(uv_work_t *w)
{
    struct redirect_req *r = w->data;
    struct grant_claims c;
    memset(&c, 0, sizeof(c));
    int64_t now = (int64_t)time(NULL);
    c.iat = now;
    c.exp = now + (int64_t)r->rs->o.granttl_s;
    snprintf(c.user, sizeof(c.user), "%s", r->user);
    snprintf(c.repository, sizeof(c.repository), "%s", r->repo);
    snprintf(c.digest, sizeof(c.digest), "%s", r->digest);
    r->sign_rc = grant_sign(r->rs->o.key, &c, r->grant, sizeof(r->grant));
}

static void sign_done(uv_work_t *w, int status)
{
    struct redirect_req *r = w->data;
    r->signing = false;
    if (r->gone) {
        end_gone(r);
        return;
    }
    if (status != 0 || r->sign_rc < 0) {
        log_msg(LOG_ERROR, "cannot sign a grant for %s@%s: %s", r->repo, r->digest,
                strerror(r->sign_rc < 0 ? -r->sign_rc : EIO));
        fall_back(r);
        return;
    }
    size_t n = strlen(r->cache.host) + strlen(r->repo) + strlen(r->digest) + strlen(r->grant) + 40;
    char *location = malloc(n);
    if (location == NULL) {
        fall_back(r);
        return;
    }
    snprintf(location, n, "%s/v2/%s/blobs/%s?%s=%s", r->cache.host, r->repo, r->digest, GRANT_PARAM,
             r->grant);
    struct http_header h[2] = {{"Location", 8, location, strlen(location)},
                               {"Cache-Control", 13, "no-store", 8}};
    http_log_set_cache(r->x, "redirect");
    http_log_set_upstream(r->x, r->cache.host);
    r->rs->stats.redirected++;
    if (http_respond_full(r->x, 307, h, 2, NULL, 0) != 0) http_respond_abort(r->x);
    free(location);
    req_free(r);
}

static void sign_and_redirect(struct redirect_req *r)
{
    r->signing = true;
    r->sign_work.data = r;
    if (uv_queue_work(r->rs->o.loop, &r->sign_work, sign_work, sign_done) != 0) {
        r->signing = false;
        fall_back(r);
    }
}

/* --- 4. May the client pull this blob? ---------------------------------------------------- */

static void blob_action(const struct redirect_req *r, char *buf, size_t len)
{
    snprintf(buf, len, "blob %s", r->digest);
}

static void head_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                      int64_t content_length)
{
    struct redirect_req *r = ud;
    r->head_status = status;
}

static void head_body(void *ud, const char *data, size_t len) {}

static void head_done(void *ud, int err)
{
    struct redirect_req *r = ud;
    struct redirect_service *rs = r->rs;
    r->head = NULL;
    if (r->gone) {
        end_gone(r);
        return;
    }
    int st = err == 0 ? r->head_status : 0;
    char action[96];
    blob_action(r, action, sizeof(action));
    uint64_t now = mono_ms();
    size_t rl = strlen(r->repo);
    if (rs->o.memory != NULL && st >= 200 && st < 300) {
        if (r->need_credential)
            auth_cache_store(rs->o.memory, rs->origin_key, r->credential, r->credential_len,
                             r->repo, rl, "pull", 200, NULL, 0, now);
        auth_cache_store(rs->o.memory, rs->origin_key, NULL, 0, r->repo, rl, action, 200, NULL, 0,
                         now);
    } else if (rs->o.memory != NULL && (st == 401 || st == 403) && r->need_credential) {
        auth_cache_store(rs->o.memory, rs->origin_key, r->credential, r->credential_len, r->repo,
                         rl, "pull", st, NULL, 0, now);
    } else if (rs->o.memory != NULL && st == 404) {
        auth_cache_store(rs->o.memory, rs->origin_key, NULL, 0, r->repo, rl, action, 404, NULL, 0,
                         now);
    }
    if (st >= 200 && st < 300)
        sign_and_redirect(r);
    else
        fall_back(r); /* the origin's own answer: a refusal, an unknown blob, a failure */
}

static void authorize(struct redirect_req *r)
{
    struct redirect_service *rs = r->rs;
    int st;
    uint64_t now = mono_ms();
    size_t rl = strlen(r->repo);
    char action[96];
    blob_action(r, action, sizeof(action));
    r->need_credential = true;
    if (rs->o.memory != NULL &&
        auth_cache_lookup(rs->o.memory, rs->origin_key, r->credential, r->credential_len, r->repo,
                          rl, "pull", now, &st, NULL)) {
        if (st != 200) {
            fall_back(r);
            return;
        }
        r->need_credential = false;
    }
    if (rs->o.memory != NULL && !r->need_credential &&
        auth_cache_lookup(rs->o.memory, rs->origin_key, NULL, 0, r->repo, rl, action, now, &st,
                          NULL)) {
        if (st == 200) {
            sign_and_redirect(r);
            return;
        }
        fall_back(r);
        return;
    }
    /* Asked of the origin: a HEAD of this blob in this repository, as this client. */
    size_t n = strlen(rs->origin_base) + rl + strlen(r->digest) + 16;
    char *url = malloc(n);
    char *value = malloc(r->credential_len + 1);
    int rc = url != NULL && value != NULL ? 0 : UV_ENOMEM;
    if (rc == 0) {
        snprintf(url, n, "%s/v2/%s/blobs/%s", rs->origin_base, r->repo, r->digest);
        memcpy(value, r->credential, r->credential_len);
        value[r->credential_len] = '\0';
        struct upstream_header h = {"Authorization", value, true};
        struct upstream_request_spec spec = {
            .method = "HEAD", .url = url, .headers = &h, .n_headers = 1, .max_redirects = 3};
        static const struct upstream_callbacks cbs = {head_head, head_body, head_done};
        rc = upstream_request(rs->o.pool, &spec, &cbs, r, &r->head);
    }
    free(url);
    free(value);
    if (rc != 0) fall_back(r);
}

/* --- 2, 3. Who is it, and which cache? -------------------------------------------------- */

static void choose(struct redirect_req *r)
{
    struct redirect_service *rs = r->rs;
    struct front_cache mine;
    const struct front_cache *chosen =
        front_state_user_cache(rs->o.state, r->user, strlen(r->user), &mine) ? &mine : NULL;
    struct policy_engine *pe = rs->o.policy;
    if (pe != NULL && policy_has_hook(pe, POLICY_HOOK_SELECT_CACHE) &&
        !policy_hook_is_shipped(pe, POLICY_HOOK_SELECT_CACHE)) {
        /* A drop-in or an edited select_cache.lua decides; the shipped one (the user's
         * choice) is done above, in C, as format_log's C twin is. */
        struct front_cache *list;
        long got = front_state_caches(rs->o.state, &list);
        size_t n = got > 0 ? (size_t)got : 0;
        struct policy_cache *pc = calloc(n ? n : 1, sizeof(*pc));
        char(*ids)[24] = calloc(n ? n : 1, sizeof(*ids));
        if (got >= 0 && pc != NULL && ids != NULL) {
            for (size_t i = 0; i < n; i++) {
                snprintf(ids[i], sizeof(ids[i]), "%" PRId64, list[i].id);
                pc[i] = (struct policy_cache){ids[i], list[i].name, list[i].host};
            }
            struct policy_request preq = {.method = "GET",
                                          .repository = r->repo,
                                          .reference = r->digest,
                                          .digest = r->digest,
                                          .kind = "blob"};
            long at = -1;
            if (policy_select_cache(pe, &preq, http_req_remote_addr(r->x), r->user,
                                    chosen ? chosen->name : NULL, pc, n, &at) == 0) {
                if (at >= 0) mine = list[at];
                chosen = at >= 0 ? &mine : NULL;
            }
        }
        free(pc);
        free(ids);
        free(list);
    }
    if (chosen == NULL) {
        fall_back(r);
        return;
    }
    r->cache = *chosen;
    authorize(r);
}

static void signed_in(struct redirect_req *r, const struct identity_verdict *v)
{
    if (v->rc != 0) {
        fall_back(r); /* anonymous or refused: the origin answers (its challenge) */
        return;
    }
    snprintf(r->user, sizeof(r->user), "%s", v->user);
    choose(r);
}

static void identity_done(void *arg, const struct identity_verdict *v)
{
    struct redirect_req *r = arg;
    r->job = NULL;
    if (r->gone) {
        end_gone(r);
        return;
    }
    signed_in(r, v);
}

static void on_gone(struct http_exchange *x, void *arg)
{
    struct redirect_req *r = arg;
    r->gone = true;
    if (r->job != NULL) {
        identity_job_cancel(r->job);
        r->job = NULL;
        end_gone(r);
    } else if (r->head != NULL) {
        upstream_cancel(r->head);
        r->head = NULL;
        end_gone(r);
    }
    /* signing: sign_done ends it */
}

void redirect_handle(struct redirect_service *rs, struct http_exchange *x,
                     const struct registry_route *route)
{
    const struct http_header *ua = http_req_header(x, "User-Agent");
    const struct http_header *authz = http_req_header(x, "Authorization");
    if ((ua != NULL && ua->value_len >= 14 && strncasecmp(ua->value, "content-cache/", 14) == 0) ||
        authz == NULL || route->name_len > REGISTRY_NAME_MAX ||
        route->reference_len > REGISTRY_REFERENCE_MAX) {
        rs->stats.relayed++;
        rs->o.fallback(rs->o.ud, x, route);
        return;
    }
    struct redirect_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        rs->stats.relayed++;
        rs->o.fallback(rs->o.ud, x, route);
        return;
    }
    rs->in_flight++;
    r->rs = rs;
    r->x = x;
    r->route = *route;
    memcpy(r->repo, route->name, route->name_len);
    memcpy(r->digest, route->reference, route->reference_len);
    r->credential = authz->value;
    r->credential_len = authz->value_len;
    http_exchange_on_gone(x, on_gone, r);
    struct identity_verdict now;
    int rc = identity_check(rs->o.identity, authz->value, authz->value_len, &now, identity_done, r,
                            &r->job);
    if (rc == IDENTITY_PENDING) return;
    if (rc < 0) {
        fall_back(r);
        return;
    }
    signed_in(r, &now);
}
