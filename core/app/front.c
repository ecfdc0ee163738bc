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
#include "registry/registry.h"
#include "registry/relay.h"
#include "registry/respond.h"
#include "registry/upstreams.h"

/* What the loops of a front share (workers). Read only once the loops run, but for the
 * state (state.h says how its views share it) and the memory (auth.h: its own lock). */
struct front_shared {
    const struct config *cfg;
    const char *builtin_policies;
    struct front_state *state;     /* loop 0's view; each worker has one of its own */
    struct auth_cache *memory;     /* remembered sign-ins and decisions, for every loop */
    struct account_tokens *tokens; /* the pull account's tokens, for every loop */
    struct grant_key key; /* signs the grants; made at first start, kept in the state dir */
    char origin_base[1400];
    char jwks[1024]; /* the public key, served to caches */
    size_t jwks_len;
    struct front *main; /* loop 0's */
};

/* One loop's front (loop 0's, or a worker's built on its own thread). */
struct front {
    struct process *proc;
    struct front_shared *sh;
    const struct config *cfg;
    struct upstream_pool *pool;
    struct upstreams *upstreams; /* the origin, as upstreams entry 0 */
    struct relay_service *relays;
    struct policy_engine *policy;
    struct front_state *state;      /* this loop's view of the caches and the users' choices */
    struct auth_verifier *verifier; /* auth.token, when configured */
    struct identity *identity;
    struct caches_api *api;
    struct redirect_service *redirects;
    struct keyring *keys;           /* the front's own key, to verify grants coming back */
    struct origin_account *account; /* the pull-only account caches' blobs are fetched with */
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
    if (http_respond_full(x, 200, h, 2, f->sh->jwks, f->sh->jwks_len) != 0) http_respond_abort(x);
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
    fprintf(out, "workers:       %u loop%s%s\n", config_workers(cfg),
            config_workers(cfg) > 1 ? "s" : "",
            cfg->workers ? "" : " (one per CPU: workers not set)");
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
    unsigned loop = f->proc->index;
    if (policy_engine_reload(f->policy, NULL, err, sizeof(err)) != 0)
        log_msg(LOG_ERROR, "SIGHUP: policies not reloaded on loop %u, the running ones stay: %s",
                loop, err);
    else
        log_msg(LOG_INFO, "SIGHUP: policies reloaded on loop %u", loop);
}

/* What the debug server shows beyond process_debug's: the origin's health. */
static void debug_wire(struct front *f)
{
    debug_add_check(f->proc->debug, "upstream", upstreams_health_check, f->upstreams);
}

/* Frees one loop's front once its loop has ended (or its build failed). */
static void front_finish(struct process *p)
{
    struct front *f = p->ud;
    if (f == NULL) return;
    origin_account_free(f->account);
    redirect_service_free(f->redirects);
    caches_api_free(f->api);
    identity_free(f->identity);
    auth_token_verifier_free(f->verifier);
    relay_service_free(f->relays);
    upstreams_free(f->upstreams);
    policy_engine_free(f->policy);
    /* (loop 0's view is the shared one: front_run closes it last) */
    if (f->state != f->sh->state) front_state_close(f->state);
    free(f);
    p->ud = NULL;
}

/* Says out of memory at start and gives the exit code for it. */
static int out_of_memory(void)
{
    log_msg(LOG_ERROR, "out of memory at start");
    return PROCESS_EXIT_RUNTIME;
}

/*
 * Builds one loop's front on p->loop and listens: loop 0's on the main thread (with the
 * debug server, made by front_run), each worker's on its own thread. Every loop has its
 * own upstream pool, policy engine (Lua states are never shared between threads), view
 * of the state, sign-in checks, redirects, grant keyring and origin account; they share
 * the config, the state, the memory of decisions and the grant key. Returns 0 or an exit
 * code (logged).
 */
static int front_build(struct process *p, void *ud)
{
    struct front_shared *sh = ud;
    const struct config *cfg = sh->cfg;
    struct front *f = calloc(1, sizeof(*f));
    if (f == NULL) return out_of_memory();
    bool main_loop = p->index == 0;
    char err[1024];
    f->proc = p;
    f->sh = sh;
    f->cfg = cfg;
    p->on_reload = front_reload;
    p->on_stopped = front_stopped;
    p->ud = f;
    if (main_loop) sh->main = f;
    if (policy_engine_new(cfg, sh->builtin_policies, &f->policy, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "policies: %s", err);
        return PROCESS_EXIT_CONFIG;
    }
    /* A failing hook is logged once per interval for the process, not per loop. */
    if (!main_loop) policy_engine_share_log(f->policy, sh->main->policy);
    if (main_loop)
        f->state = sh->state;
    else if (front_state_share(sh->state, &f->state) != 0)
        return out_of_memory();
    front_state_attach(f->state, p->loop);
    int rc = process_pool(p, &f->pool);
    if (rc != 0) return rc == -EINVAL ? PROCESS_EXIT_CONFIG : PROCESS_EXIT_RUNTIME;
    f->upstreams = upstreams_new(cfg, f->pool);
    f->relays = f->upstreams ? relay_service_new(f->upstreams) : NULL;
    if (f->relays == NULL) return out_of_memory();
    upstreams_set_policy(f->upstreams, f->policy);
    /* Who a client is: its credentials, as the origin (or auth.token) judges them. */
    if (cfg->auth_token_realm != NULL &&
        auth_token_verifier_new(cfg->auth_token_rootcertbundle, cfg->auth_token_issuer,
                                cfg->auth_token_service, err, sizeof(err), &f->verifier) != 0) {
        log_msg(LOG_ERROR, "auth.token: %s", err);
        return PROCESS_EXIT_CONFIG;
    }
    if (f->verifier != NULL && auth_token_verifier_attach(f->verifier, p->loop, sh->memory) != 0)
        return out_of_memory();
    f->identity = identity_new(p->loop, f->pool, sh->origin_base, sh->memory, f->verifier);
    f->api = f->identity ? caches_api_new(cfg, f->state, f->identity) : NULL;
    struct redirect_opts ro = {
        .loop = p->loop,
        .pool = f->pool,
        .origin_base = sh->origin_base,
        .origin_key = cfg->upstreams[0].originhost,
        .identity = f->identity,
        .state = f->state,
        .policy = f->policy,
        .memory = sh->memory,
        .key = &sh->key,
        .granttl_s = cfg->granttl_ns / 1000000000ULL,
        .fallback = relay,
        .ud = f,
    };
    f->redirects = f->api ? redirect_service_new(&ro) : NULL;
    f->keys = keyring_new(p->loop, f->pool);
    if (f->keys != NULL) keyring_add(f->keys, &sh->key);
    f->account = origin_account_new(p->loop, f->pool, sh->origin_base, cfg->front_username,
                                    cfg->front_password, sh->tokens);
    if (f->redirects == NULL || f->keys == NULL || f->account == NULL) return out_of_memory();
    /* Upload URLs name the origin: clients are sent back to us instead. */
    if (relay_service_rewrite_location(f->relays, cfg->http_tls_certificate != NULL,
                                       cfg->http_host) != 0)
        return out_of_memory();
    /* This loop's sections of /metrics (summed over the loops; the server's follow). */
    process_add_section(p, redirect_render_metrics, f->redirects);
    process_add_section(p, policy_render_metrics, f->policy);
    rc = process_listen(p, front_handle, f, process_format_access, process_observe, f->policy);
    if (rc != 0) return rc == -EINVAL ? PROCESS_EXIT_CONFIG : PROCESS_EXIT_RUNTIME;
    return PROCESS_EXIT_OK;
}

/* What front_run made before the loops: freed after them. */
static void shared_free(struct front_shared *sh)
{
    front_state_close(sh->state);
    auth_cache_free(sh->memory);
    account_tokens_free(sh->tokens);
}

int front_run(const struct config *cfg, const char *builtin_policies)
{
    struct front_shared sh;
    memset(&sh, 0, sizeof(sh));
    sh.cfg = cfg;
    sh.builtin_policies = builtin_policies;
    char err[1024];
    /* The policies are checked before anything is opened (each loop loads its own). */
    struct policy_engine *pe = NULL;
    if (policy_engine_new(cfg, builtin_policies, &pe, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "policies: %s", err);
        return PROCESS_EXIT_CONFIG;
    }
    policy_engine_free(pe);
    /* The state first: a second front on the same storage root is refused here. */
    char dir[1100];
    snprintf(dir, sizeof(dir), "%s/%s", cfg->storage_root, FRONT_STATE_DIR);
    if (mkdir_root(cfg->storage_root, err, sizeof(err)) != 0 ||
        front_state_open(dir, &sh.state, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return PROCESS_EXIT_RUNTIME;
    }
    char key_path[1200];
    bool created = false;
    snprintf(key_path, sizeof(key_path), "%s/grant-key.pem", dir);
    if (grant_key_load_or_create(key_path, &sh.key, &created, err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        shared_free(&sh);
        return PROCESS_EXIT_RUNTIME;
    }
    log_msg(LOG_INFO, "%s grant key %s (kid %s), served at %s", created ? "made the" : "the",
            key_path, sh.key.kid, GRANT_KEYS_PATH);
    int jl = grant_jwks_write(&sh.key, 1, sh.jwks, sizeof(sh.jwks));
    sh.jwks_len = jl > 0 ? (size_t)jl : 0;
    const struct url *o = &cfg->upstreams[0].origin;
    if (url_format_origin(o, sh.origin_base, sizeof(sh.origin_base)) > 0)
        snprintf(sh.origin_base + strlen(sh.origin_base),
                 sizeof(sh.origin_base) - strlen(sh.origin_base), "%s", o->path);
    sh.memory = auth_cache_new(AUTH_CACHE_DEFAULT_ENTRIES, AUTH_CACHE_DEFAULT_ALLOW_TTL_MS,
                               AUTH_CACHE_DEFAULT_DENY_TTL_MS);
    sh.tokens = account_tokens_new();
    if (sh.memory == NULL || sh.tokens == NULL) {
        shared_free(&sh);
        return out_of_memory();
    }

    struct process proc;
    process_init(&proc, cfg);
    unsigned loops = config_workers(cfg);
    proc.reuseport = loops > 1;
    int rc = front_build(&proc, &sh);
    if (rc == PROCESS_EXIT_OK && process_debug(&proc) != 0) rc = PROCESS_EXIT_RUNTIME;
    if (rc == PROCESS_EXIT_OK && proc.debug != NULL) debug_wire(sh.main);
    struct process_mode mode = {.build = front_build, .finish = front_finish, .ud = &sh};
    if (rc == PROCESS_EXIT_OK) rc = process_start_workers(&proc, loops, &mode);
    if (rc != PROCESS_EXIT_OK) return rc; /* (what started is left to the exit) */
    struct front_cache *caches;
    long n_caches = front_state_caches(sh.state, &caches);
    free(caches);
    log_msg(LOG_INFO, "front for origin %s; state %s/%s: %ld caches, %zu users with a cache",
            cfg->upstreams[0].originhost, dir, FRONT_STATE_DB, n_caches,
            front_state_users(sh.state));

    process_run(&proc);
    front_finish(&proc);
    shared_free(&sh);
    uv_loop_close(proc.loop);
    return PROCESS_EXIT_OK;
}
