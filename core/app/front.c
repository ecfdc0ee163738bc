/*
 * front.c: the front's request handler and its wiring. See front.h.
 */
#include "app/front.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "access/auth.h"
#include "access/grant.h"
#include "access/keyring.h"
#include "app/process.h"
#include "base/log.h"
#include "base/url.h"
#include "front/account.h"
#include "front/caches_api.h"
#include "front/identity.h"
#include "front/page.h"
#include "front/redirect.h"
#include "front/state.h"
#include "lua/policy.h"
#include "net/chain.h"
#include "registry/registry.h"
#include "registry/relay.h"
#include "registry/respond.h"
#include "registry/upstreams.h"

struct front {
    struct process proc;
    const struct config *cfg;
    struct upstream_pool *pool;
    struct upstreams *upstreams; /* the origin, as upstreams entry 0 */
    struct relay_service *relays;
    struct policy_engine *policy;
    struct front_state *state;      /* the caches and the users' choices */
    struct auth_cache *memory;      /* remembered sign-ins and decisions */
    struct auth_verifier *verifier; /* auth.token, when configured */
    struct identity *identity;
    struct caches_api *api;
    struct grant_key key; /* signs the grants; made at first start, kept in the state dir */
    struct redirect_service *redirects;
    struct keyring *keys;           /* the front's own key, to verify grants coming back */
    struct origin_account *account; /* the pull-only account caches' blobs are fetched with */
    char origin_base[1400];
    char jwks[1024]; /* the public key, served to caches */
    size_t jwks_len;
};

/* --- Requests ------------------------------------------------------------------------- */

static bool path_is(const char *path, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(path, prefix, n) == 0 && (len == n || path[n] == '/');
}

/* What the front does not redirect: relayed, as the origin answers it. */
static void relay(void *ud, struct http_exchange *x, const struct registry_route *route)
{
    struct front *f = ud;
    relay_handle(f->relays, x, route, 0);
}

/* --- A cache's request with a grant ---------------------------------------------------- */

/* A blob asked for with a grant (a cache's miss, or a client that follows a redirect to
 * the front): the grant verified, then the blob fetched with the front's own account. */
struct granted {
    struct front *f;
    struct http_exchange *x;
    struct registry_route route;
    char repo[REGISTRY_NAME_MAX + 1];
    struct keyring_check *check;
    struct account_job *job;
};

static void granted_gone(struct http_exchange *x, void *arg)
{
    struct granted *g = arg;
    keyring_check_cancel(g->check);
    account_job_cancel(g->job);
    http_respond_end(x);
    free(g);
}

/* The account's Authorization is known: the origin serves the blob. */
static void granted_fetch(struct granted *g, int err, const char *authorization)
{
    struct http_exchange *x = g->x;
    struct registry_route route = g->route;
    struct front *f = g->f;
    http_exchange_on_gone(x, NULL, NULL);
    free(g);
    if (err != 0) {
        respond_error(x, err == -EACCES ? REG_ERR_UPSTREAM_FAILED : REG_ERR_UNAVAILABLE,
                      err == -EACCES ? "the origin refused the front's account"
                                     : "the origin could not be asked",
                      NULL);
        return;
    }
    http_log_set_cache(x, "grant");
    char target[REGISTRY_PATH_MAX + GRANT_MAX + 64];
    bool stripped = grant_strip(http_req_target(x), target, sizeof(target));
    relay_handle_as(f->relays, x, &route, 0, authorization, stripped ? target : NULL);
}

static void granted_account(void *arg, int err, const char *authorization)
{
    struct granted *g = arg;
    g->job = NULL;
    granted_fetch(g, err, authorization);
}

static void granted_checked(void *arg, const struct keyring_verdict *v)
{
    struct granted *g = arg;
    g->check = NULL;
    if (v->rc != 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "grant refused: %s", v->why);
        log_msg(LOG_INFO, "%s %s: %s", http_req_method(g->x), http_log_uri(g->x), msg);
        http_exchange_on_gone(g->x, NULL, NULL);
        respond_error_with(g->x, v->status == 403 ? REG_ERR_DENIED : REG_ERR_UNAUTHORIZED,
                           v->status, NULL, 0, msg, NULL);
        free(g);
        return;
    }
    const char *now = NULL;
    int rc = origin_account_get(g->f->account, g->repo, &now, granted_account, g, &g->job);
    if (rc != ACCOUNT_PENDING) granted_fetch(g, rc < 0 ? -EIO : 0, now);
}

static void serve_granted(struct front *f, struct http_exchange *x,
                          const struct registry_route *route, const char *grant, size_t len)
{
    struct granted *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        respond_error(x, REG_ERR_INTERNAL, "out of memory", NULL);
        return;
    }
    g->f = f;
    g->x = x;
    g->route = *route;
    memcpy(g->repo, route->name, route->name_len);
    http_exchange_on_gone(x, granted_gone, g);
    if (keyring_verify(f->keys, NULL, 0, grant, len, route->name, route->name_len, route->reference,
                       route->reference_len, granted_checked, g, &g->check) != 0) {
        http_exchange_on_gone(x, NULL, NULL);
        free(g);
        respond_error(x, REG_ERR_INTERNAL, "cannot verify the grant", NULL);
    }
}

/* Everything under /v2/: the registry API, relayed to the origin; a signed-in user's
 * blob downloads redirected to their cache. */
static void front_registry(struct front *f, struct http_exchange *x, const char *path, size_t len)
{
    struct registry_route route;
    enum registry_error_code err = registry_route_parse(path, len, &route);
    if (route.name != NULL)
        http_log_set_target(x, route.name, route.name_len,
                            route.reference_is_digest ? route.reference : NULL,
                            route.reference_len);
    if (err != REG_ERR_NONE) {
        respond_error(x, err, NULL, NULL);
        return;
    }
    size_t qlen, glen;
    const char *q = http_req_query(x, &qlen);
    const char *grant = grant_in_query(q, qlen, &glen);
    if (route.kind == ROUTE_BLOB && grant != NULL && (http_req_is_get(x) || http_req_is_head(x))) {
        serve_granted(f, x, &route, grant, glen);
        return;
    }
    if (route.kind == ROUTE_BLOB && http_req_is_get(x)) {
        redirect_handle(f->redirects, x, &route);
        return;
    }
    relay_handle(f->relays, x, &route, 0);
}

/* The public key that verifies the grants, for the caches (a JWKS). */
static void serve_keys(struct front *f, struct http_exchange *x)
{
    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        http_respond_add_header(x, "Allow", "GET, HEAD");
        respond_error(x, REG_ERR_UNSUPPORTED, "the grant keys are read only", NULL);
        return;
    }
    struct http_header h[2] = {{"Content-Type", 12, "application/json", 16},
                               {"Cache-Control", 13, "max-age=300", 11}};
    if (http_respond_full(x, 200, h, 2, f->jwks, f->jwks_len) != 0) http_respond_abort(x);
}

static void front_handle(struct http_exchange *x, void *ud)
{
    struct front *f = ud;
    size_t len;
    const char *path = http_req_path(x, &len);
    /* A redirect grant is a credential: the logs show the URI without it. */
    char redacted[REGISTRY_PATH_MAX + GRANT_MAX + 64];
    if (grant_redact(http_req_target(x), redacted, sizeof(redacted))) http_log_set_uri(x, redacted);
    if (path_is(path, len, "/v2")) {
        front_registry(f, x, path, len);
        return;
    }
    if (len == strlen(GRANT_KEYS_PATH) && memcmp(path, GRANT_KEYS_PATH, len) == 0) {
        serve_keys(f, x);
        return;
    }
    if (caches_api_path(path, len)) {
        caches_api_handle(f->api, x);
        return;
    }
    if (page_path(path, len)) {
        page_handle(x);
        return;
    }
    respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
}

/* --- Wiring ---------------------------------------------------------------------------- */

/* The storage root, made when missing (its parent must exist). */
static int mkdir_root(const char *root, char *err, size_t errlen)
{
    if (mkdir(root, 0750) == 0 || errno == EEXIST) return 0;
    snprintf(err, errlen, "storage root %s: %s", root, strerror(errno));
    return -errno;
}

void front_describe(const struct config *cfg, FILE *out)
{
    char ttl[64];
    config_format_duration(cfg->granttl_ns, ttl, sizeof(ttl));
    fprintf(out, "mode:          front (contentcaches): the registry side, before the origin\n");
    fprintf(out, "origin:        %s\n", cfg->upstreams[0].originhost);
    fprintf(out, "state:         %s/front (the caches and the users' choices)\n",
            cfg->storage_root);
    fprintf(out, "admins:        ");
    for (size_t i = 0; i < cfg->n_admins; i++)
        fprintf(out, "%s%s", i ? ", " : "", cfg->admins[i]);
    fprintf(out, "%s\n", cfg->n_admins ? "" : "none (no one may register or remove caches)");
    if (cfg->front_username != NULL)
        fprintf(out, "account:       %s (password set): fetches blobs for the caches\n",
                cfg->front_username);
    else
        fprintf(out, "account:       none: blobs for the caches are fetched anonymously\n");
    fprintf(out, "grant ttl:     %s (lifetime of a blob redirect)\n", ttl);
}

/* --- Wiring (serving) ------------------------------------------------------------------------ */

static void front_stopped(void *ud)
{
    struct front *f = ud;
    keyring_free(f->keys);
    f->keys = NULL;
    upstream_pool_close(f->pool);
    f->pool = NULL;
}

static void front_reload(void *ud)
{
    struct front *f = ud;
    char err[1024];
    if (policy_engine_reload(f->policy, NULL, err, sizeof(err)) != 0)
        log_msg(LOG_ERROR, "SIGHUP: policies not reloaded, the running ones stay: %s", err);
    else
        log_msg(LOG_INFO, "SIGHUP: policies reloaded");
}

static void debug_wire(struct front *f)
{
    struct debug *d = f->proc.debug;
    debug_add_section(d, chain_render_metrics, NULL);
    debug_add_section(d, redirect_render_metrics, f->redirects);
    debug_add_section(d, policy_render_metrics, f->policy);
    debug_add_section(d, http_server_render_metrics, f->proc.server);
    debug_add_check(d, "upstream", upstreams_health_check, f->upstreams);
}

static void front_free(struct front *f)
{
    origin_account_free(f->account);
    redirect_service_free(f->redirects);
    caches_api_free(f->api);
    identity_free(f->identity);
    auth_token_verifier_free(f->verifier);
    auth_cache_free(f->memory);
    front_state_close(f->state);
    relay_service_free(f->relays);
    upstreams_free(f->upstreams);
    policy_engine_free(f->policy);
}

int front_run(const struct config *cfg, const char *builtin_policies)
{
    struct front f;
    memset(&f, 0, sizeof(f));
    f.cfg = cfg;
    char err[1024];
    if (policy_engine_new(cfg, builtin_policies, &f.policy, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "policies: %s", err);
        return PROCESS_EXIT_CONFIG;
    }
    /* The state first: a second front on the same storage root is refused here. */
    char dir[1100];
    snprintf(dir, sizeof(dir), "%s/%s", cfg->storage_root, FRONT_STATE_DIR);
    if (mkdir_root(cfg->storage_root, err, sizeof(err)) != 0 ||
        front_state_open(dir, &f.state, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        front_free(&f);
        return PROCESS_EXIT_RUNTIME;
    }
    char key_path[1200];
    bool created = false;
    snprintf(key_path, sizeof(key_path), "%s/grant-key.pem", dir);
    if (grant_key_load_or_create(key_path, &f.key, &created, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        front_free(&f);
        return PROCESS_EXIT_RUNTIME;
    }
    log_msg(LOG_INFO, "%s grant key %s (kid %s), served at %s", created ? "made the" : "the",
            key_path, f.key.kid, GRANT_KEYS_PATH);
    int jl = grant_jwks_write(&f.key, 1, f.jwks, sizeof(f.jwks));
    f.jwks_len = jl > 0 ? (size_t)jl : 0;
    process_init(&f.proc, cfg);
    front_state_attach(f.state, f.proc.loop);
    f.proc.on_reload = front_reload;
    f.proc.on_stopped = front_stopped;
    f.proc.ud = &f;
    int rc = process_pool(&f.proc, &f.pool);
    if (rc != 0) {
        front_free(&f);
        return rc == -EINVAL ? PROCESS_EXIT_CONFIG : PROCESS_EXIT_RUNTIME;
    }
    f.upstreams = upstreams_new(cfg, f.pool);
    f.relays = f.upstreams ? relay_service_new(f.upstreams) : NULL;
    if (f.relays == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return PROCESS_EXIT_RUNTIME;
    }
    upstreams_set_policy(f.upstreams, f.policy);
    /* Who a client is: its credentials, as the origin (or auth.token) judges them. */
    f.memory = auth_cache_new(AUTH_CACHE_DEFAULT_ENTRIES, AUTH_CACHE_DEFAULT_ALLOW_TTL_MS,
                              AUTH_CACHE_DEFAULT_DENY_TTL_MS);
    if (cfg->auth_token_realm != NULL &&
        auth_token_verifier_new(cfg->auth_token_rootcertbundle, cfg->auth_token_issuer,
                                cfg->auth_token_service, err, sizeof(err), &f.verifier) != 0) {
        log_msg(LOG_ERROR, "auth.token: %s", err);
        return PROCESS_EXIT_CONFIG;
    }
    if (f.verifier != NULL && auth_token_verifier_attach(f.verifier, f.proc.loop, f.memory) != 0) {
        log_msg(LOG_ERROR, "out of memory at start");
        return PROCESS_EXIT_RUNTIME;
    }
    const struct url *o = &cfg->upstreams[0].origin;
    if (url_format_origin(o, f.origin_base, sizeof(f.origin_base)) > 0)
        snprintf(f.origin_base + strlen(f.origin_base),
                 sizeof(f.origin_base) - strlen(f.origin_base), "%s", o->path);
    f.identity =
        f.memory ? identity_new(f.proc.loop, f.pool, f.origin_base, f.memory, f.verifier) : NULL;
    f.api = f.identity ? caches_api_new(cfg, f.state, f.identity) : NULL;
    struct redirect_opts ro = {
        .loop = f.proc.loop,
        .pool = f.pool,
        .origin_base = f.origin_base,
        .origin_key = cfg->upstreams[0].originhost,
        .identity = f.identity,
        .state = f.state,
        .policy = f.policy,
        .memory = f.memory,
        .key = &f.key,
        .granttl_s = cfg->granttl_ns / 1000000000ULL,
        .fallback = relay,
        .ud = &f,
    };
    f.redirects = f.api ? redirect_service_new(&ro) : NULL;
    f.keys = keyring_new(f.proc.loop, f.pool);
    if (f.keys != NULL) keyring_add(f.keys, &f.key);
    f.account = origin_account_new(f.proc.loop, f.pool, f.origin_base, cfg->front_username,
                                   cfg->front_password);
    if (f.redirects == NULL || f.keys == NULL || f.account == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return PROCESS_EXIT_RUNTIME;
    }
    /* Upload URLs name the origin: clients are sent back to us instead. */
    if (relay_service_rewrite_location(f.relays, cfg->http_tls_certificate != NULL,
                                       cfg->http_host) != 0) {
        log_msg(LOG_ERROR, "out of memory at start");
        return PROCESS_EXIT_RUNTIME;
    }
    rc =
        process_listen(&f.proc, front_handle, &f, process_format_access, process_observe, f.policy);
    if (rc != 0) return rc == -EINVAL ? PROCESS_EXIT_CONFIG : PROCESS_EXIT_RUNTIME;
    if (process_debug(&f.proc) != 0) return PROCESS_EXIT_RUNTIME;
    if (f.proc.debug != NULL) debug_wire(&f);
    const struct front_cache *caches;
    size_t n_caches = front_state_caches(f.state, &caches);
    log_msg(LOG_INFO, "front for origin %s; state %s/%s: %zu caches, %zu users with a cache",
            cfg->upstreams[0].originhost, dir, FRONT_STATE_DB, n_caches,
            front_state_users(f.state));

    process_run(&f.proc);
    front_free(&f);
    uv_loop_close(f.proc.loop);
    return PROCESS_EXIT_OK;
}
