/*
 * main.c: the command line, signals and wiring.
 *
 *   content-cache CONFIG            serve
 *   content-cache serve CONFIG      the same
 *   content-cache --check CONFIG    validate, print what would be done, exit
 *   content-cache expire CONFIG [--dry-run]        one blobttl sweep now (or what it would do)
 *   content-cache evict CONFIG --bytes N [--dry-run]  free N bytes as the evict policy chooses
 *   content-cache fsck CONFIG [--repair]
 *   content-cache warm CONFIG IMAGE... [options]   images into the store now (warm_cmd.h)
 *   content-cache --version | --help
 *
 * Serving wires the floors together: the store, the upstream pool and the upstreams,
 * the relay and blob services behind the router, authorization, the disk budget and
 * expiry, the policies, the debug server's sections and checks. Exit codes: usage_format.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "access/auth.h"
#include "access/keyring.h"
#include "cache/blob.h"
#include "cache/budget.h"
#include "base/config.h"
#include "app/debug.h"
#include "app/front.h"
#include "app/process.h"
#include "app/policies.h"
#include "cache/expire.h"
#include "cache/fetch.h"
#include "cache/fetch_board.h"
#include "cache/in_use.h"
#include "cache/answers.h"
#include "cache/fsck.h"
#include "cache/manifest.h"
#include "cache/outage.h"
#include "cache/pulls.h"
#include "base/log.h"
#include "lua/policy.h"
#include "app/router.h"
#include "app/warm_cmd.h"
#include "app/warm_debug.h"
#include "registry/relay.h"
#include "registry/upstreams.h"
#include "net/server.h"
#include "cache/store.h"
#include "net/tls.h"
#include "net/upstream.h"
#include "base/digest.h"

extern char **environ;

enum exit_code {
    EXIT_OK = PROCESS_EXIT_OK,
    EXIT_CONFIG = PROCESS_EXIT_CONFIG,   /* the configuration is invalid */
    EXIT_USAGE = 2,                      /* the command line is wrong */
    EXIT_RUNTIME = PROCESS_EXIT_RUNTIME, /* could not start serving (address in use, storage
                                            not writable) */
    EXIT_DAMAGED = 4, /* fsck found damaged blobs or leftovers (and did not remove them) */
};

/* Where the built-in policies are, when not where they were installed (a binary run from
 * its build tree, the tests): the environment says so explicitly. */
#define BUILTIN_POLICIES_ENV "CONTENT_CACHE_BUILTIN_POLICIES"

static const char *builtin_policies(void)
{
    const char *dir = getenv(BUILTIN_POLICIES_ENV);
    return dir != NULL && dir[0] != '\0' ? dir : NULL;
}

static const char usage_format[] =
    "Usage:\n"
    "  content-cache CONFIG            serve with the Docker Registry config.yml CONFIG\n"
    "  content-cache serve CONFIG      the same\n"
    "  content-cache --check CONFIG    validate CONFIG, print what would be done, exit\n"
    "  content-cache expire CONFIG [--dry-run]\n"
    "                                  delete the blobs whose TTL (blobttl, or the blob_ttl\n"
    "                                  policy) has passed, now; with --dry-run print them\n"
    "                                  and the TTL each got, and delete nothing\n"
    "  content-cache evict CONFIG --bytes N [--dry-run]\n"
    "                                  delete what the evict policy chooses to free N bytes\n"
    "                                  (suffixes as diskbudget's: KiB, MB, ...); with\n"
    "                                  --dry-run print its choice, delete nothing\n"
    "  content-cache fsck CONFIG [--repair]\n"
    "                                  verify every stored blob against its digest; with\n"
    "                                  --repair remove the bad ones and leftover files\n"
    "%s"
    "  content-cache --version         print the version\n"
    "  content-cache --help            print this help\n"
    "\n"
    "The built-in policies are read from " CC_POLICY_INSTALL_DIR ",\n"
    "or from the directory in $" BUILTIN_POLICIES_ENV " (e.g. a source tree's policies/).\n"
    "\n"
    "Environment variables REGISTRY_<SECTION>_<KEY> override scalar keys of CONFIG,\n"
    "as in Docker Registry (REGISTRY_HTTP_ADDR, REGISTRY_LOG_LEVEL, ...).\n"
    "\n"
    "Signals: SIGTERM and SIGINT stop accepting and let responses in progress finish\n"
    "for up to http.draintimeout; SIGHUP reloads the policies.\n"
    "\n"
    "Exit codes:\n"
    "  0  success (or a clean stop after SIGTERM/SIGINT)\n"
    "  1  the configuration is invalid\n"
    "  2  the command line is wrong\n"
    "  3  could not start serving (address in use, storage root not usable, ...)\n"
    "  4  fsck found damaged blobs or leftover files (and, without --repair, left them)\n"
    "  (warm: 0 every image warmed, 1 some failed or it was interrupted, 2 the command\n"
    "  line is wrong)\n";

/* The usage text, with the lines of the commands that keep their own (warm). */
static void print_usage(FILE *to)
{
    fprintf(to, usage_format, warm_cmd_usage);
}

/* What the loops of one process share (workers): the config and the store are read only
 * once the loops run; loop 0's budget takes the commits of every loop through
 * `commits` (an async handle and two atomic counters), as only loop 0 may touch it. */
struct shared {
    struct config *cfg;
    struct store *store;
    struct fetch_board *board; /* one fetch per missing blob over the loops; NULL with one */
    struct auth_cache *auth;   /* the decisions remembered, for every loop (auth.h) */
    struct in_use *in_use;     /* the blobs every loop's requests read (in_use.h) */
    struct app *main;          /* loop 0's */
    uv_async_t commits;
    bool commits_open;
    _Atomic uint64_t committed_blobs, committed_bytes;
};

/* One loop's services (loop 0's, or a worker's built on its own thread). */
struct app {
    struct process *proc; /* the loop, the server, the debug server (loop 0), signals */
    struct shared *shared;
    uv_loop_t *loop;
    struct config *cfg;
    struct upstream_pool *pool;
    struct upstreams *upstreams;
    struct relay_service *relays;
    struct router *router;
    struct store *store;
    struct fetch_manager *fetches;
    struct blob_service *blobs;
    struct manifest_service *manifests;
    struct answers *answers; /* the credentials' answers on disk, for the outage policy */
    struct outage *outage;
    struct expiry *expiry; /* loop 0's only */
    struct policy_engine *policy;
    struct policies adapters; /* what the modules ask the policies through */
    struct pulls *pulls;
    struct auth_cache *auth; /* shared->auth */
    struct auth_verifier *verifier;
    struct keyring *grant_keys; /* the front's keys, for redirected requests */
    struct budget *budget;      /* loop 0's own; a worker's is NULL (it asks loop 0's) */
    struct warm_debug *warms;   /* POST /debug/warm: loop 0's only (its debug server) */
};

static struct config *load_config(const char *path)
{
    char err[1024];
    struct config *cfg = NULL;
    if (config_load(path, environ, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache: %s\n", err);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_warnings; i++)
        fprintf(stderr, "content-cache: warning: %s\n", cfg->warnings[i]);
    if (config_check_files(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache: %s\n", err);
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

static void print_cache_settings(const struct config *cfg);

static int run_check(const char *path)
{
    struct config *cfg = load_config(path);
    if (cfg == NULL) {
        fprintf(stderr, "content-cache: configuration file %s is invalid\n", path);
        return EXIT_CONFIG;
    }
    char perr[1024];
    struct policy_engine *pe = NULL;
    if (policy_engine_new(cfg, builtin_policies(), &pe, perr, sizeof(perr)) != 0) {
        fprintf(stderr, "content-cache: policies: %s\n", perr);
        fprintf(stderr, "content-cache: configuration file %s is invalid\n", path);
        config_free(cfg);
        return EXIT_CONFIG;
    }
    /* The TLS material must load as it will at start (PEM that parses, a key that
     * matches, a minimum version this build has). */
    struct tls_config *tc = NULL;
    int trc = tls_client_config_new((const char *const *)cfg->cas, cfg->n_cas, true, &tc, perr,
                                    sizeof(perr));
    tls_config_free(tc);
    tc = NULL;
    if (trc == 0 && cfg->http_tls_certificate != NULL)
        trc = tls_server_config_new(cfg->http_tls_certificate, cfg->http_tls_key,
                                    cfg->http_tls_minimumtls, &tc, perr, sizeof(perr));
    if (trc != 0) {
        fprintf(stderr, "content-cache: TLS: %s\n", perr);
        fprintf(stderr, "content-cache: configuration file %s is invalid\n", path);
        policy_engine_free(pe);
        config_free(cfg);
        return EXIT_CONFIG;
    }
    tls_config_free(tc);
    printf("configuration file %s is valid\n", path);
    printf("listen:        %s%s\n", cfg->http_addr,
           cfg->http_tls_certificate ? " (https)" : " (http)");
    if (cfg->has_contentcaches) {
        front_describe(cfg, stdout);
    } else {
        print_cache_settings(cfg);
    }
    for (size_t i = 0; i < cfg->n_cas; i++)
        printf("upstream CA:   %s\n", cfg->cas[i]);
    printf("policies:      built-in defaults%s%s%s; hooks in force:",
           policy_hook_is_shipped(pe, POLICY_HOOK_FORMAT_LOG) ||
                   !policy_hook_is_builtin(pe, POLICY_HOOK_FORMAT_LOG)
               ? ""
               : " (edited: format_log runs as Lua)",
           cfg->policydir ? " + drop-ins of " : "", cfg->policydir ? cfg->policydir : "");
    for (int h = 0; h < POLICY_HOOK_COUNT; h++)
        if (policy_has_hook(pe, (enum policy_hook)h))
            printf(" %s%s", policy_hook_name((enum policy_hook)h),
                   policy_hook_is_builtin(pe, (enum policy_hook)h) ? "" : " (drop-in)");
    printf("\n");
    policy_engine_free(pe);
    config_free(cfg);
    return EXIT_OK;
}

/* What --check says a cache would do (after the listen address). */
static void print_cache_settings(const struct config *cfg)
{
    printf("storage root:  %s%s\n", cfg->storage_root,
           cfg->delete_enabled ? " (delete enabled)" : "");
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const struct config_upstream *u = &cfg->upstreams[i];
        /* "a, b, then origin o" with upstream caches; "origin o" without. */
        printf("upstreams[%zu]:  ", i);
        for (size_t k = 0; k < u->n_upstreamhosts; k++)
            printf("%s, ", u->upstreamhosts[k]);
        printf("%sorigin %s\n", u->n_upstreamhosts > 0 ? "then " : "", u->originhost);
    }
    if (cfg->has_blobttl) {
        char d[64];
        config_format_duration(cfg->blobttl_ns, d, sizeof(d));
        printf("blob ttl:      %s (blobs not pulled for this long are deleted)\n", d);
    } else {
        printf("blob ttl:      none (blobs are kept)\n");
    }
    printf("workers:       %u loop%s%s\n", config_workers(cfg), config_workers(cfg) > 1 ? "s" : "",
           cfg->workers ? "" : " (one per CPU: workers not set)");
    char tc_s[64], tp_s[64], th_s[64];
    unsigned connect_ms =
        cfg->upstream_connect_ms ? cfg->upstream_connect_ms : UPSTREAM_DEFAULT_CONNECT_MS;
    unsigned progress_ms =
        cfg->upstream_progress_ms ? cfg->upstream_progress_ms : UPSTREAM_DEFAULT_IO_MS;
    unsigned head_ms = cfg->upstream_head_ms ? cfg->upstream_head_ms : UPSTREAM_DEFAULT_HEAD_MS;
    config_format_duration((uint64_t)connect_ms * 1000000ULL, tc_s, sizeof(tc_s));
    config_format_duration((uint64_t)progress_ms * 1000000ULL, tp_s, sizeof(tp_s));
    config_format_duration((uint64_t)head_ms * 1000000ULL, th_s, sizeof(th_s));
    printf("upstream:      connect timeout %s, no-progress timeout %s, response head within %s\n",
           tc_s, tp_s, th_s);
    if (cfg->has_budget)
        printf("disk budget:   %llu bytes (evict from %u%% down to %u%%)\n",
               (unsigned long long)cfg->budget_bytes, cfg->budget_high_pct, cfg->budget_low_pct);
}

/* When the command began: the "now" of a sweep or an eviction. */
static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* What `expire` and `evict` need: the config, the policies, the store. */
struct store_cmd {
    struct config *cfg;
    struct policies adapters;
    struct store *store;
    double now;
    bool dry_run;
};

static int store_cmd_open(struct store_cmd *c, const char *path)
{
    char err[1024];
    memset(c, 0, sizeof(*c));
    if ((c->cfg = load_config(path)) == NULL) return EXIT_CONFIG;
    if (policy_engine_new(c->cfg, builtin_policies(), &c->adapters.pe, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache: policies: %s\n", err);
        config_free(c->cfg);
        return EXIT_CONFIG;
    }
    if (store_open(c->cfg->storage_root, &c->store, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache: %s\n", err);
        policy_engine_free(c->adapters.pe);
        config_free(c->cfg);
        return EXIT_RUNTIME;
    }
    c->now = wall_now();
    return EXIT_OK;
}

static void store_cmd_close(struct store_cmd *c)
{
    store_close(c->store);
    policy_engine_free(c->adapters.pe);
    config_free(c->cfg);
}

/* A blob's repositories, for a line: "library/debian,app/web", or "-". */
static void repositories_text(const struct store_cmd *c, const struct expire_blob *b, char *buf,
                              size_t len)
{
    const char *repos[POLICY_BLOB_MAX_REPOSITORIES];
    struct policy_blob pb;
    char digest[72];
    size_t at = 0;
    policies_blob_table(&c->adapters, b, &pb, digest, repos, POLICY_BLOB_MAX_REPOSITORIES);
    snprintf(buf, len, "-");
    for (size_t i = 0; i < pb.n_repositories && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? "," : "", repos[i]);
}

/* The sweep's TTL of a blob, through the command's policies. */
static int store_cmd_ttl(void *ud, const struct expire_blob *b, double *ttl_s)
{
    return policies_blob_ttl(&((struct store_cmd *)ud)->adapters, b, ttl_s);
}

static void print_expired(void *ud, const struct expire_blob *b)
{
    struct store_cmd *c = ud;
    char repos[512];
    double ttl = 0;
    int has = policies_blob_ttl(&c->adapters, b, &ttl);
    if (has < 0) { /* no hook, or it failed: the sweep used the configured blobttl */
        has = c->cfg->has_blobttl;
        ttl = (double)c->cfg->blobttl_ns / 1e9;
    }
    repositories_text(c, b, repos, sizeof(repos));
    printf("%s sha256:%s %llu bytes: not pulled for %.0fs, ttl %.0fs (pulls %llu, "
           "repositories %s)\n",
           c->dry_run ? "would remove" : "removed", b->hex, (unsigned long long)b->size,
           c->now - b->last_pulled, ttl, (unsigned long long)b->pulls, repos);
}

/*
 * `content-cache expire CONFIG [--dry-run]`: one TTL sweep now, with the TTLs the running
 * cache would use (the blob_ttl policy: policies/ttl.lua's configured blobttl, or a
 * drop-in's), printing each blob removed (or, dry, that would be) and the TTL it got.
 */
static int run_expire(const char *path, bool dry_run)
{
    struct store_cmd c;
    int rc = store_cmd_open(&c, path);
    if (rc != EXIT_OK) return rc;
    c.dry_run = dry_run;
    if (!policies_expiry_needed(c.adapters.pe, c.cfg)) {
        printf("no blobttl configured and the shipped blob_ttl policy: nothing expires\n");
        store_cmd_close(&c);
        return EXIT_OK;
    }
    struct expire_opts eo = {
        .default_ttl_s = c.cfg->has_blobttl ? (double)c.cfg->blobttl_ns / 1e9 : 0,
        .ttl = store_cmd_ttl,
        .on_removed = print_expired,
        .ud = &c,
    };
    long n = expire_sweep_sync(c.store, &eo, c.now, dry_run);
    printf("%ld blobs %s\n", n < 0 ? 0 : n,
           dry_run ? "would be removed (nothing was removed)" : "removed");
    store_cmd_close(&c);
    return n < 0 ? EXIT_RUNTIME : EXIT_OK;
}

/* The evict policy's choice, through the command's policies. */
static long store_cmd_evict(void *ud, const budget_blob *cands, size_t n, uint64_t bytes_needed,
                            size_t *victims, size_t max_victims)
{
    return policies_evict(&((struct store_cmd *)ud)->adapters, cands, n, bytes_needed, victims,
                          max_victims);
}

static void print_evicted(void *ud, const budget_blob *b)
{
    struct store_cmd *c = ud;
    char repos[512];
    repositories_text(c, b, repos, sizeof(repos));
    printf("%s sha256:%s %llu bytes: last pulled %.0fs ago, stored %.0fs ago, pulls %llu "
           "(repositories %s)\n",
           c->dry_run ? "would evict" : "evicted", b->hex, (unsigned long long)b->size,
           c->now - b->last_pulled, c->now - b->created, (unsigned long long)b->pulls, repos);
}

/*
 * `content-cache evict CONFIG --bytes N [--dry-run]`: what an eviction run of the disk
 * budget does when N bytes must go, now: the evict policy chooses among every stored blob
 * (least recently pulled first is the order it gets them in), and its victims are deleted
 * in its order (dry: printed, not deleted).
 */
static int run_evict(const char *path, const char *bytes_text, bool dry_run)
{
    uint64_t bytes;
    if (config_parse_size(bytes_text, &bytes) != 0) {
        fprintf(stderr,
                "content-cache: evict --bytes: expected a size (1048576, 500MiB, 2GB), "
                "got \"%s\"\n",
                bytes_text);
        return EXIT_USAGE;
    }
    struct store_cmd c;
    int rc = store_cmd_open(&c, path);
    if (rc != EXIT_OK) return rc;
    c.dry_run = dry_run;
    struct budget_opts bo = {.evict = store_cmd_evict, .ud = &c};
    long n = budget_evict_sync(c.store, &bo, bytes, dry_run, print_evicted, &c);
    printf("%ld blobs %s for %llu bytes\n", n < 0 ? 0 : n,
           dry_run ? "would be evicted (nothing was removed)" : "evicted",
           (unsigned long long)bytes);
    store_cmd_close(&c);
    return n < 0 ? EXIT_RUNTIME : EXIT_OK;
}

static void print_problem(void *ud, const char *what, const char *problem)
{
    printf("%s: %s\n", what, problem);
}

/* `content-cache fsck CONFIG [--repair]`: every stored blob hashed against its name. */
static int run_fsck(const char *path, bool repair)
{
    struct config *cfg = load_config(path);
    if (cfg == NULL) return EXIT_CONFIG;
    struct fsck_report rep;
    int rc = fsck_run(cfg->storage_root, repair, &rep, print_problem, NULL);
    if (rc != 0) {
        fprintf(stderr, "content-cache: fsck of %s: %s\n", cfg->storage_root, strerror(-rc));
        config_free(cfg);
        return EXIT_RUNTIME;
    }
    printf("%llu blobs checked (%llu bytes): %llu ok, %llu bad, %llu stray entries, %llu "
           "temporary files; %llu removed\n",
           (unsigned long long)rep.checked, (unsigned long long)rep.bytes,
           (unsigned long long)rep.ok, (unsigned long long)rep.bad, (unsigned long long)rep.stray,
           (unsigned long long)rep.temp, (unsigned long long)rep.removed);
    config_free(cfg);
    bool left = rep.bad + rep.stray + rep.temp > rep.removed;
    return left ? EXIT_DAMAGED : EXIT_OK;
}

/* `content-cache warm CONFIG IMAGE... [options]` (warm_cmd.h). */
static int run_warm(int argc, char **argv)
{
    struct warm_cmd_args *args = malloc(sizeof(*args));
    char why[512];
    if (args == NULL) return EXIT_RUNTIME;
    if (warm_cmd_parse(argc, argv, args, why, sizeof(why)) != 0) {
        fprintf(stderr, "content-cache warm: %s\n\n", why);
        print_usage(stderr);
        free(args);
        return EXIT_USAGE;
    }
    struct config *cfg = load_config(args->config);
    int rc = cfg == NULL ? EXIT_CONFIG : warm_cmd_run(cfg, args, builtin_policies());
    config_free(cfg);
    free(args);
    return rc;
}

/* The sections of /metrics each loop keeps for itself, in the order operators read them
 * (process_add_section: summed over the loops; the server's follow, process_listen). */
static void add_loop_sections(struct app *app)
{
    process_add_section(app->proc, fetch_render_metrics, app->fetches);
    process_add_section(app->proc, blob_render_metrics, app->blobs);
    process_add_section(app->proc, manifest_render_metrics, app->manifests);
    process_add_section(app->proc, outage_render_metrics, app->outage);
    if (app->policy != NULL) process_add_section(app->proc, policy_render_metrics, app->policy);
}

/* What the debug server shows beyond process_debug's: the store's figures (loop 0 keeps
 * them) and the two health checks. */
static void debug_wire(struct app *app)
{
    struct debug *d = app->proc->debug;
    debug_add_section(d, budget_render_metrics, app->budget);
    if (app->expiry != NULL) debug_add_section(d, expire_render_metrics, app->expiry);
    debug_add_check(d, "storage", store_health_check, app->store);
    debug_add_check(d, "upstream", upstreams_health_check, app->upstreams);
}

/* The server has drained: what keeps the loop running is stopped. */
static void server_stopped(void *arg)
{
    struct app *app = arg;
    warm_debug_stop(app->warms); /* (before the fetches it follows fail) */
    fetch_manager_cancel_all(app->fetches);
    budget_stop(app->budget);
    app->budget = NULL;
    if (app == app->shared->main)
        pulls_stop(app->pulls); /* the counts gathered since the last flush go to disk */
    app->pulls = NULL;
    if (app->expiry != NULL) {
        expire_stop(app->expiry, NULL, NULL);
        app->expiry = NULL;
    }
    upstreams_stop_probes(app->upstreams); /* after debug_stop: its checks end now */
    keyring_free(app->grant_keys);
    app->grant_keys = NULL;
    upstream_pool_close(app->pool);
    app->pool = NULL;
    if (app->shared->main == app && app->shared->commits_open) {
        uv_close((uv_handle_t *)&app->shared->commits, NULL);
        app->shared->commits_open = false;
    }
}

static void on_hup(void *arg)
{
    struct app *app = arg;
    char err[1024];
    unsigned loop = app->proc->index;
    if (policy_engine_reload(app->policy, NULL, err, sizeof(err)) != 0)
        log_msg(LOG_ERROR, "SIGHUP: policies not reloaded on loop %u, the running ones stay: %s",
                loop, err);
    else
        log_msg(LOG_INFO, "SIGHUP: policies reloaded on loop %u", loop);
}

static long app_evict(void *ud, const budget_blob *cands, size_t n, uint64_t bytes_needed,
                      size_t *victims, size_t max_victims)
{
    return policies_evict(&((struct app *)ud)->adapters, cands, n, bytes_needed, victims,
                          max_victims);
}

static int app_blob_ttl(void *ud, const struct expire_blob *b, double *ttl_s)
{
    return policies_blob_ttl(&((struct app *)ud)->adapters, b, ttl_s);
}

/* What a warm stores (warm.h): what a client's miss would, the budget's room and the
 * admit policy. */
static bool warm_admit(void *ud, const char *digest, int64_t size, const struct policy_request *req)
{
    struct app *app = ud;
    return budget_fits(app->budget, size) && policies_admit(&app->adapters, digest, size, req);
}

/* Eviction's and expiry's question (on loop 0): is a request of any loop reading it?
 * The blob services of every loop count their readers in shared->in_use. */
static bool blob_in_use(void *ud, const char *hex)
{
    struct app *app = ud;
    return blob_service_in_use(app->blobs, hex);
}

/* A blob committed on this loop: into the store's totals, which loop 0's budget keeps
 * (a worker's commits reach it through shared->commits). */
static void blob_committed(void *ud, const char *hex, uint64_t size)
{
    struct app *app = ud;
    struct shared *sh = app->shared;
    if (app == sh->main) {
        budget_added(app->budget, size);
        return;
    }
    atomic_fetch_add(&sh->committed_bytes, size);
    atomic_fetch_add(&sh->committed_blobs, 1);
    uv_async_send(&sh->commits);
}

/* On loop 0: the workers' commits since the last wake-up, into the budget. */
static void commits_arrived(uv_async_t *h)
{
    struct shared *sh = h->data;
    uint64_t blobs = atomic_exchange(&sh->committed_blobs, 0);
    uint64_t bytes = atomic_exchange(&sh->committed_bytes, 0);
    /* budget_added counts one blob a call: the bytes go with the first. */
    for (uint64_t i = 0; i < blobs; i++)
        budget_added(sh->main->budget, i == 0 ? bytes : 0);
}

static void blob_expired(void *ud, const struct expire_blob *b)
{
    struct app *app = ud;
    budget_removed(app->budget, b->size);
}

/* Lets the process hold as many connections as the hard limit allows. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/*
 * Builds one loop's services on p->loop and listens: loop 0's on the main thread (with
 * the budget's eviction, expiry and the debug server), each worker's on its own thread.
 * Every loop has its own upstream pool (and TLS configs), policy engine (Lua states are
 * never shared between threads), fetch manager, authorization memory, pull counts and
 * listener; they share the config and the store. Returns 0 or an exit code (logged).
 */
static int app_build(struct process *p, void *ud)
{
    struct shared *sh = ud;
    struct app *app = calloc(1, sizeof(*app));
    if (app == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    bool main_loop = p->index == 0;
    char err[512];
    app->shared = sh;
    app->proc = p;
    app->cfg = sh->cfg;
    app->store = sh->store;
    app->loop = p->loop;
    p->on_reload = on_hup;
    p->on_stopped = server_stopped;
    p->ud = app;
    if (main_loop) sh->main = app;

    int rc = policy_engine_new(app->cfg, builtin_policies(), &app->policy, err, sizeof(err));
    if (rc != 0) {
        log_msg(LOG_ERROR, "policies: %s", err);
        return EXIT_CONFIG;
    }
    /* A failing hook is logged once per interval for the process, not per loop. */
    if (!main_loop) policy_engine_share_log(app->policy, sh->main->policy);
    /* https upstreams: the system's CAs and the config's cas. */
    rc = process_pool(p, &app->pool);
    if (rc != 0) return rc == -EINVAL ? EXIT_CONFIG : EXIT_RUNTIME;
    app->upstreams = upstreams_new(app->cfg, app->pool);
    app->relays = app->upstreams ? relay_service_new(app->upstreams) : NULL;
    app->fetches = fetch_manager_new(app->loop, app->store, app->pool);
    if (app->fetches != NULL) fetch_manager_set_board(app->fetches, sh->board);
    app->blobs = app->upstreams && app->fetches
                     ? blob_service_new(app->loop, app->store, app->fetches, app->upstreams)
                     : NULL;
    app->manifests =
        app->upstreams ? manifest_service_new(app->loop, app->store, app->upstreams) : NULL;
    app->router =
        app->relays && app->blobs ? router_new(app->upstreams, app->relays, app->blobs) : NULL;
    if (app->router == NULL || app->manifests == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    upstreams_set_policy(app->upstreams, app->policy);
    /* Authorization decisions are remembered briefly; with auth.token, tokens are
     * verified here against the issuer's certificates. */
    app->auth = sh->auth;
    if (app->cfg->auth_token_realm != NULL &&
        auth_token_verifier_new(app->cfg->auth_token_rootcertbundle, app->cfg->auth_token_issuer,
                                app->cfg->auth_token_service, err, sizeof(err),
                                &app->verifier) != 0) {
        log_msg(LOG_ERROR, "auth.token: %s", err);
        return EXIT_CONFIG;
    }
    /* Token signatures are verified on the thread pool, outcomes remembered. */
    if (app->auth == NULL ||
        (app->verifier != NULL &&
         auth_token_verifier_attach(app->verifier, app->loop, app->auth) != 0)) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    blob_service_set_auth(app->blobs, app->cfg, app->auth, app->verifier);
    /* What any loop reads, loop 0's eviction and expiry leave alone (blob_in_use). */
    blob_service_set_in_use(app->blobs, sh->in_use);
    /* Requests redirected by a front carry grants, verified with its keys (fetched when
     * the first grant comes, and when one names a key not seen yet). */
    app->grant_keys = keyring_new(app->loop, app->pool);
    if (app->grant_keys == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    blob_service_set_grants(app->blobs, app->grant_keys);
    manifest_service_set_auth(app->manifests, app->cfg, app->auth, app->verifier);
    router_set_manifests(app->router, app->manifests);

    /* The store's totals, and eviction under the disk budget when one is set: loop 0's.
     * A worker asks loop 0's budget only whether a size fits (its options, fixed). */
    if (main_loop) {
        struct budget_opts bo = {
            .max_bytes = app->cfg->has_budget ? app->cfg->budget_bytes : 0,
            .high_pct = app->cfg->budget_high_pct,
            .low_pct = app->cfg->budget_low_pct,
            .evict = app_evict,
            .in_use = blob_in_use,
            .ud = app,
        };
        if (budget_start(app->loop, app->store, &bo, &app->budget) != 0 ||
            uv_async_init(app->loop, &sh->commits, commits_arrived) != 0) {
            log_msg(LOG_ERROR, "out of memory at start");
            return EXIT_RUNTIME;
        }
        sh->commits.data = sh;
        sh->commits_open = true;
        uv_unref((uv_handle_t *)&sh->commits);
    }
    blob_service_set_budget(app->blobs, sh->main->budget);
    fetch_manager_on_commit(app->fetches, blob_committed, app);
    /* Pull counts (blob.pulls of the policies), and the admit policy: loop 0's table
     * counts every loop's pulls (pulls.h). */
    app->pulls = main_loop ? pulls_new(app->loop, app->store) : sh->main->pulls;
    app->adapters = (struct policies){.pe = app->policy, .pulls = app->pulls};
    blob_service_set_pulls(app->blobs, app->pulls);
    blob_service_set_admit(app->blobs, policies_admit, &app->adapters);
    manifest_service_set_pulls(app->manifests, app->pulls);
    manifest_service_on_commit(app->manifests, blob_committed, app);
    /* When every upstream fails: the on_upstream_failure policy, with the origin's last
     * answers for each credential kept on disk as hashes. */
    app->answers = answers_open(app->loop, app->store);
    app->outage = outage_new(app->answers, policies_on_upstream_failure, &app->adapters);
    if (app->outage == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    blob_service_set_outage(app->blobs, app->answers, app->outage);
    manifest_service_set_outage(app->manifests, app->answers, app->outage);
    /* Expiry runs with a configured blobttl, or when the blob_ttl in force is not the
     * shipped one (which gives no TTL without a blobttl); the sweeps are loop 0's. */
    if (policies_expiry_needed(app->policy, app->cfg)) {
        double ttl_s = app->cfg->has_blobttl ? (double)app->cfg->blobttl_ns / 1e9 : 0;
        blob_service_set_ttl(app->blobs, ttl_s);
        struct expire_opts eo = {.default_ttl_s = ttl_s,
                                 .ttl = app_blob_ttl,
                                 .on_removed = blob_expired,
                                 .in_use = blob_in_use,
                                 .ud = app};
        if (main_loop && expire_start(app->loop, app->store, &eo, &app->expiry) != 0) {
            log_msg(LOG_ERROR, "cannot start the blob expiry timer");
            return EXIT_RUNTIME;
        }
    }

    add_loop_sections(app);
    rc = process_listen(p, router_handle, app->router, process_format_access, process_observe,
                        app->policy);
    if (rc != 0) return rc == -EINVAL ? EXIT_CONFIG : EXIT_RUNTIME;
    return EXIT_OK;
}

/* Frees one loop's services once its loop has ended (or its build failed). */
static void app_finish(struct process *p)
{
    struct app *app = p->ud;
    if (app == NULL) return;
    warm_debug_free(app->warms);
    policy_engine_free(app->policy);
    auth_token_verifier_free(app->verifier);
    blob_service_free(app->blobs);
    manifest_service_free(app->manifests);
    outage_free(app->outage);
    answers_close(app->answers); /* (no work is in flight: the loop has run out) */
    if (app->fetches != NULL) fetch_manager_free(app->fetches);
    router_free(app->router);
    relay_service_free(app->relays);
    upstreams_free(app->upstreams);
    free(app);
    p->ud = NULL;
}

/* Serves the cache (a downstream middleware); the front's config goes to front_run. */
static int run_serve(const char *path)
{
    struct shared sh;
    memset(&sh, 0, sizeof(sh));
    sh.cfg = load_config(path);
    if (sh.cfg == NULL) return EXIT_CONFIG;
    struct log_options log_opts = config_log_options(sh.cfg);
    log_configure(&log_opts);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (sh.cfg->has_contentcaches) {
        int frc = front_run(sh.cfg, builtin_policies());
        config_free(sh.cfg);
        return frc;
    }

    /* File I/O and hashing run on libuv's thread pool (one for the process, whatever
     * the loops): size it for a disk with several fetches and many readers in flight,
     * unless the operator did. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);

    char err[512];
    unsigned removed = 0;
    int rc = store_open(sh.cfg->storage_root, &sh.store, &removed, err, sizeof(err));
    if (rc != 0) {
        log_msg(LOG_ERROR, "%s", err);
        config_free(sh.cfg);
        return EXIT_RUNTIME;
    }
    if (removed > 0)
        log_msg(LOG_INFO, "removed %u unfinished temporary blob files left by an earlier run",
                removed);

    /* Authorization decisions are remembered briefly, once for every loop. */
    sh.auth = auth_cache_new(AUTH_CACHE_DEFAULT_ENTRIES, AUTH_CACHE_DEFAULT_ALLOW_TTL_MS,
                             AUTH_CACHE_DEFAULT_DENY_TTL_MS);
    if ((sh.in_use = in_use_new()) == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    struct process proc;
    process_init(&proc, sh.cfg);
    unsigned loops = config_workers(sh.cfg);
    proc.reuseport = loops > 1;
    if (loops > 1 && (sh.board = fetch_board_new()) == NULL) {
        log_msg(LOG_ERROR, "out of memory at start");
        return EXIT_RUNTIME;
    }
    rc = app_build(&proc, &sh);
    if (rc != EXIT_OK) return rc;
    struct app *app = proc.ud;
    if (process_debug(&proc) != 0) return EXIT_RUNTIME;
    if (proc.debug != NULL) debug_wire(app);
    if (proc.debug != NULL) {
        struct warm_env we = {.loop = app->loop,
                              .cfg = app->cfg,
                              .store = app->store,
                              .fetches = app->fetches,
                              .manifests = app->manifests,
                              .upstreams = app->upstreams,
                              .admit = warm_admit,
                              .admit_ud = app};
        if ((app->warms = warm_debug_new(&we)) == NULL ||
            debug_add_route(proc.debug, "/debug/warm", warm_debug_handle, app->warms) != 0) {
            log_msg(LOG_ERROR, "out of memory at start");
            return EXIT_RUNTIME;
        }
    }
    struct process_mode mode = {.build = app_build, .finish = app_finish, .ud = &sh};
    rc = process_start_workers(&proc, loops, &mode);
    if (rc != 0) return rc;
    log_msg(LOG_INFO, "storage root %s", sh.cfg->storage_root);
    for (size_t i = 0; i < sh.cfg->n_upstreams; i++) {
        const struct config_upstream *u = &sh.cfg->upstreams[i];
        for (size_t k = 0; k < u->n_upstreamhosts; k++)
            log_msg(LOG_INFO, "upstream cache %s (for origin %s)", u->upstreamhosts[k],
                    u->originhost);
        log_msg(LOG_INFO, "origin %s", u->originhost);
    }

    process_run(&proc);
    app_finish(&proc);
    fetch_board_free(sh.board);
    auth_cache_free(sh.auth);
    in_use_free(sh.in_use); /* (every loop's blob service is freed) */
    store_close(sh.store);
    config_free(sh.cfg);
    uv_loop_close(proc.loop);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-v") == 0)) {
        printf("content-cache %s\n", CC_VERSION);
        return EXIT_OK;
    }
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        print_usage(stdout);
        return EXIT_OK;
    }
    if (argc == 3 && (strcmp(argv[1], "--check") == 0 || strcmp(argv[1], "check") == 0))
        return run_check(argv[2]);
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "expire") == 0) {
        bool dry = argc == 4 && strcmp(argv[3], "--dry-run") == 0;
        if (argc == 4 && !dry) {
            print_usage(stderr);
            return EXIT_USAGE;
        }
        return run_expire(argv[2], dry);
    }
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "evict") == 0) {
        const char *bytes = NULL;
        bool dry = false, bad = false;
        for (int i = 3; i < argc; i++) {
            if (strcmp(argv[i], "--dry-run") == 0 && !dry)
                dry = true;
            else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc && bytes == NULL)
                bytes = argv[++i];
            else
                bad = true;
        }
        if (bad || bytes == NULL || argc != (dry ? 6 : 5)) {
            print_usage(stderr);
            return EXIT_USAGE;
        }
        return run_evict(argv[2], bytes, dry);
    }
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "fsck") == 0) {
        bool repair = argc == 4 && strcmp(argv[3], "--repair") == 0;
        if (argc == 4 && !repair) {
            print_usage(stderr);
            return EXIT_USAGE;
        }
        return run_fsck(argv[2], repair);
    }
    if (argc >= 2 && strcmp(argv[1], "warm") == 0) return run_warm(argc, argv);
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return run_serve(argv[2]);
    if (argc == 2 && argv[1][0] != '-') return run_serve(argv[1]);
    print_usage(stderr);
    return EXIT_USAGE;
}
