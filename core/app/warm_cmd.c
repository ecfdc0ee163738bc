/*
 * warm_cmd.c: `content-cache warm`: the command line, the credentials it is given, the
 * cache's objects wired as for serving (without a listener), and what it prints. See
 * warm_cmd.h.
 */
#include "app/warm_cmd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <uv.h>

#include "app/policies.h"
#include "app/process.h"
#include "base/base64.h"
#include "base/json.h"
#include "base/log.h"
#include "cache/fetch.h"
#include "cache/manifest.h"
#include "cache/store.h"
#include "lua/policy.h"
#include "registry/registry.h"
#include "registry/upstreams.h"

#define CREDS_FILE_MAX 4096
#define AUTHFILE_MAX (1u << 20)
#define AUTHFILE_ENTRIES 64
#define PROGRESS_MS 200

const char warm_cmd_usage[] =
    "  content-cache warm CONFIG IMAGE... [--platform P[,P]] [--jobs N]\n"
    "        [--creds USER:PASS | --creds-file FILE] [--authfile FILE] [--json]\n"
    "                                  put each image's manifests and blobs into the store\n"
    "                                  now, as a pull through the cache would; IMAGE is\n"
    "                                  name:tag, name@sha256:..., or registry/name:tag\n"
    "                                  (the upstreams entry of that origin). --platform:\n"
    "                                  only these of an index (os/arch[/variant], default\n"
    "                                  all); --jobs: blobs at once (default 4); --json: a\n"
    "                                  summary on stdout. Credentials: --creds, the first\n"
    "                                  line of --creds-file, or the `auths` of a Docker\n"
    "                                  config.json (--authfile, default\n"
    "                                  $DOCKER_CONFIG/config.json, ~/.docker/config.json),\n"
    "                                  each sent only to its registry. Exit 0: all warmed,\n"
    "                                  1: some reference failed (named, with the reason)\n";

/* ---- the command line ---------------------------------------------------------------------- */

/* The value of option `name` at argv[*i] ("--name value" or "--name=value"), or NULL when
 * argv[*i] is not that option; *missing when it is but has no value. */
static const char *option(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

static int add_platforms(struct warm_cmd_args *a, const char *list, char *why, size_t why_len)
{
    size_t used = 0;
    for (size_t k = 0; k < a->n_platforms; k++)
        used += strlen(a->platforms[k]) + 1;
    size_t len = strlen(list);
    if (used + len + 1 > sizeof(a->platforms_buf)) {
        snprintf(why, why_len, "--platform: too long a list");
        return -EINVAL;
    }
    char *copy = a->platforms_buf + used;
    memcpy(copy, list, len + 1);
    for (char *save = NULL, *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (a->n_platforms == WARM_MAX_PLATFORMS) {
            snprintf(why, why_len, "--platform: at most %d platforms", WARM_MAX_PLATFORMS);
            return -EINVAL;
        }
        a->platforms[a->n_platforms++] = p;
    }
    return 0;
}

int warm_cmd_parse(int argc, char **argv, struct warm_cmd_args *a, char *why, size_t why_len)
{
    memset(a, 0, sizeof(*a));
    a->jobs = WARM_DEFAULT_JOBS;
    for (int i = 2; i < argc; i++) {
        bool missing = false;
        const char *v;
        if (strcmp(argv[i], "--json") == 0) {
            a->json = true;
        } else if ((v = option(argc, argv, &i, "--platform", &missing)) != NULL) {
            if (add_platforms(a, v, why, why_len) != 0) return -EINVAL;
        } else if ((v = option(argc, argv, &i, "--jobs", &missing)) != NULL) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*v == '\0' || *end != '\0' || n < 1 || n > WARM_MAX_JOBS) {
                snprintf(why, why_len, "--jobs: expected a number from 1 to %d, got \"%s\"",
                         WARM_MAX_JOBS, v);
                return -EINVAL;
            }
            a->jobs = (unsigned)n;
        } else if ((v = option(argc, argv, &i, "--creds-file", &missing)) != NULL) {
            a->creds_file = v;
        } else if ((v = option(argc, argv, &i, "--creds", &missing)) != NULL) {
            if (strchr(v, ':') == NULL || v[0] == ':') {
                snprintf(why, why_len, "--creds: expected USER:PASSWORD");
                return -EINVAL;
            }
            a->creds = v;
        } else if ((v = option(argc, argv, &i, "--authfile", &missing)) != NULL) {
            a->authfile = v;
        } else if (missing) {
            snprintf(why, why_len, "%s needs a value", argv[i]);
            return -EINVAL;
        } else if (argv[i][0] == '-') {
            snprintf(why, why_len, "unknown option %s", argv[i]);
            return -EINVAL;
        } else if (a->config == NULL) {
            a->config = argv[i];
        } else if (a->n_images == WARM_MAX_IMAGES) {
            snprintf(why, why_len, "at most %d images at once", WARM_MAX_IMAGES);
            return -EINVAL;
        } else {
            if (warm_reference_check(argv[i], why, why_len) != 0) return -EINVAL;
            a->images[a->n_images++] = argv[i];
        }
    }
    if (a->creds != NULL && a->creds_file != NULL) {
        snprintf(why, why_len, "--creds and --creds-file: one or the other");
        return -EINVAL;
    }
    if (a->config == NULL || a->n_images == 0) {
        snprintf(why, why_len, "warm needs a CONFIG and at least one IMAGE");
        return -EINVAL;
    }
    return 0;
}

/* ---- credentials ---------------------------------------------------------------------------- */

struct creds_entry {
    char registry[300];
    char *authorization;
};

struct creds {
    char *everywhere; /* --creds, --creds-file: the one registry of the references */
    struct creds_entry entries[AUTHFILE_ENTRIES];
    size_t n;
};

/* "Basic base64(user:pass)" of user_pass[0..len), malloc'd, or NULL. */
static char *basic_of(const char *user_pass, size_t len)
{
    size_t cap = base64_encoded_len(len, false) + 7;
    char *out = malloc(cap);
    if (out == NULL) return NULL;
    memcpy(out, "Basic ", 6);
    if (base64_encode((const unsigned char *)user_pass, len, false, out + 6, cap - 6) < 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* The host[:port] a config.json key names: "https://host:port/v1/" -> "host:port". Docker
 * Hub's several names are one registry. */
static void registry_key(const char *key, size_t len, char *out, size_t out_len)
{
    if (len > 8 && strncasecmp(key, "https://", 8) == 0)
        key += 8, len -= 8;
    else if (len > 7 && strncasecmp(key, "http://", 7) == 0)
        key += 7, len -= 7;
    const char *slash = memchr(key, '/', len);
    if (slash != NULL) len = (size_t)(slash - key);
    snprintf(out, out_len, "%.*s", (int)len, key);
    if (strcasecmp(out, "index.docker.io") == 0 || strcasecmp(out, "docker.io") == 0)
        snprintf(out, out_len, "registry-1.docker.io");
}

static int read_small_file(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -errno;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int err = ferror(f) ? -EIO : 0;
    fclose(f);
    if (buf == NULL) return -ENOMEM;
    if (err != 0 || n > max) {
        free(buf);
        return err != 0 ? err : -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Reads the `auths` of a Docker config.json: each entry's "auth" (base64 of user:pass). */
static int creds_read_authfile(struct creds *c, const char *path, char *why, size_t why_len)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_small_file(path, AUTHFILE_MAX, &text, &len);
    if (rc != 0) {
        snprintf(why, why_len, "--authfile %s: %s", path, strerror(-rc));
        return rc;
    }
    struct json_token *tok = malloc(json_tokens_for(len) * sizeof(*tok));
    struct json_doc doc;
    size_t auths;
    rc = tok ? json_parse(text, len, tok, json_tokens_for(len), &doc) : -ENOMEM;
    if (rc != 0 || json_type_of(&doc, 0) != JSON_OBJECT) {
        snprintf(why, why_len, "%s is not a JSON object (a Docker config.json)", path);
        rc = -EINVAL;
    } else if (json_object_get(&doc, 0, "auths", &auths) != 0 ||
               json_type_of(&doc, auths) != JSON_OBJECT) {
        rc = 0; /* no logins in it */
    } else {
        size_t i = auths + 1;
        for (size_t k = 0; k < json_count(&doc, auths) && c->n < AUTHFILE_ENTRIES; k++) {
            size_t key = i, value = i + 1, a;
            i = json_skip(&doc, value);
            char name[300], b64[2048];
            unsigned char raw[1536];
            size_t nlen, blen, rlen;
            if (json_string_decode(&doc, key, name, sizeof(name), &nlen) != 0 ||
                json_type_of(&doc, value) != JSON_OBJECT ||
                json_object_get(&doc, value, "auth", &a) != 0 ||
                json_string_decode(&doc, a, b64, sizeof(b64), &blen) != 0 || blen == 0 ||
                base64_decode(b64, blen, false, raw, &rlen) != 0 || memchr(raw, ':', rlen) == NULL)
                continue; /* (a credential helper's entry, or nothing usable) */
            struct creds_entry *e = &c->entries[c->n];
            registry_key(name, nlen, e->registry, sizeof(e->registry));
            if ((e->authorization = basic_of((const char *)raw, rlen)) != NULL) c->n++;
            memset(raw, 0, sizeof(raw));
        }
    }
    free(tok);
    free(text);
    return rc;
}

/* The credentials the command line gives: 0, or an error with why (a usage error). */
static int creds_load(struct creds *c, const struct warm_cmd_args *a, char *why, size_t why_len)
{
    memset(c, 0, sizeof(*c));
    if (a->creds != NULL) {
        c->everywhere = basic_of(a->creds, strlen(a->creds));
        return c->everywhere ? 0 : -ENOMEM;
    }
    if (a->creds_file != NULL) {
        char *text = NULL;
        size_t len = 0;
        int rc = read_small_file(a->creds_file, CREDS_FILE_MAX, &text, &len);
        if (rc != 0) {
            snprintf(why, why_len, "--creds-file %s: %s", a->creds_file, strerror(-rc));
            return rc;
        }
        len = strcspn(text, "\r\n"); /* the first line */
        if (len == 0 || memchr(text, ':', len) == NULL || text[0] == ':') {
            snprintf(why, why_len, "--creds-file %s: its first line is not USER:PASSWORD",
                     a->creds_file);
            free(text);
            return -EINVAL;
        }
        c->everywhere = basic_of(text, len);
        memset(text, 0, len);
        free(text);
        return c->everywhere ? 0 : -ENOMEM;
    }
    if (a->authfile != NULL) return creds_read_authfile(c, a->authfile, why, why_len);
    /* As docker and skopeo read it: $DOCKER_CONFIG/config.json, else ~/.docker's. */
    char path[4096];
    const char *dir = getenv("DOCKER_CONFIG"), *home = getenv("HOME");
    if (dir != NULL && dir[0] != '\0')
        snprintf(path, sizeof(path), "%s/config.json", dir);
    else if (home != NULL && home[0] != '\0')
        snprintf(path, sizeof(path), "%s/.docker/config.json", home);
    else
        return 0;
    if (access(path, F_OK) != 0) return 0;
    return creds_read_authfile(c, path, why, why_len);
}

static void creds_free(struct creds *c)
{
    free(c->everywhere);
    for (size_t i = 0; i < c->n; i++)
        free(c->entries[i].authorization);
}

/* The registry's own entry of the config.json, or --creds. */
static const char *creds_for(const struct creds *c, const char *registry)
{
    char key[300];
    if (c->everywhere != NULL) return c->everywhere;
    registry_key(registry, strlen(registry), key, sizeof(key));
    for (size_t i = 0; i < c->n; i++)
        if (strcasecmp(c->entries[i].registry, key) == 0) return c->entries[i].authorization;
    return NULL;
}

/* ---- what it prints ------------------------------------------------------------------------- */

struct cmd {
    const struct warm_cmd_args *args;
    const struct creds *creds;
    const struct config *cfg;
    struct policies adapters; /* the admit policy */
    struct warm *warm;
    struct fetch_manager *fetches;
    struct upstream_pool *pool;
    uv_timer_t progress;
    uv_signal_t sig_int, sig_term;
    bool tty;
    size_t columns; /* the terminal's width */
    bool drawn;
    bool interrupted;
};

static void human_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    unsigned u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

/* One reference's progress line (a terminal's): state, blobs, bytes, rate. */
static void progress_line(struct cmd *c, size_t i, uint64_t now_ms)
{
    struct warm_image_status s;
    warm_image(c->warm, i, &s);
    char done[32], total[32], rate[32];
    human_bytes(s.bytes_done, done, sizeof(done));
    human_bytes(s.bytes_total, total, sizeof(total));
    uint64_t end = s.ended_ms ? s.ended_ms : now_ms;
    double secs = s.started_ms && end > s.started_ms ? (double)(end - s.started_ms) / 1000 : 0;
    /* The rate of what came from upstream (blobs found stored cost nothing). */
    human_bytes(secs > 0 ? (uint64_t)((double)s.bytes_fetched / secs) : 0, rate, sizeof(rate));
    char line[1024];
    int n = snprintf(line, sizeof(line), "%-40s %-9s %u/%u blobs  %s / %s  %s/s%s%s", s.reference,
                     warm_state_name(s.state), s.blobs_done, s.blobs_total, done, total, rate,
                     s.state == WARM_FAILED ? "  " : "", s.state == WARM_FAILED ? s.error : "");
    /* One row each, or the redraw would climb too few: cut at the terminal's width (the
     * reasons are printed whole at the end). */
    size_t len = n < 0 ? 0 : (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (c->columns > 1 && len >= c->columns) len = c->columns - 1;
    printf("\033[2K%.*s\n", (int)len, line);
}

static void progress_draw(struct cmd *c)
{
    size_t n = warm_image_count(c->warm);
    uint64_t now = uv_now(uv_default_loop());
    if (c->drawn) printf("\033[%zuF", n); /* back to the first line */
    for (size_t i = 0; i < n; i++)
        progress_line(c, i, now);
    c->drawn = true;
    fflush(stdout);
}

static void on_progress_timer(uv_timer_t *t)
{
    progress_draw(t->data);
}

/* warm_env.admit: the admit policy, and no blob larger than the disk budget's high
 * watermark (such a blob passes through a serving cache unstored). */
static bool cmd_admit(void *ud, const char *digest, int64_t size, const struct policy_request *req)
{
    struct cmd *c = ud;
    const struct config *cfg = c->cfg;
    if (cfg->has_budget && size > 0 &&
        (uint64_t)size > cfg->budget_bytes / 100 * cfg->budget_high_pct)
        return false;
    return policies_admit(&c->adapters, digest, size, req);
}

/* warm_opts.authorization. */
static const char *cmd_authorization(void *ud, const char *registry)
{
    return creds_for(((struct cmd *)ud)->creds, registry);
}

/* Not a terminal: a line when a reference ends. */
static void on_image_done(void *ud, struct warm *w, size_t i)
{
    struct cmd *c = ud;
    if (c->tty || c->args->json) return;
    struct warm_image_status s;
    warm_image(w, i, &s);
    if (s.state == WARM_FAILED) {
        printf("failed %s: %s\n", s.reference, s.error);
    } else {
        char refused[96] = "";
        if (s.blobs_refused > 0)
            snprintf(refused, sizeof(refused),
                     ", %u not admitted (the admit policy or the disk budget)", s.blobs_refused);
        printf("warmed %s (%s): %u platform%s, %u blobs of %llu bytes: %u fetched (%llu bytes), "
               "%u already stored%s; %u manifests; %.1f s\n",
               s.reference, s.digest, s.platforms, s.platforms == 1 ? "" : "s", s.blobs_total,
               (unsigned long long)s.bytes_total, s.blobs_fetched,
               (unsigned long long)s.bytes_fetched, s.blobs_present, refused, s.manifests,
               (double)(s.ended_ms - s.started_ms) / 1000.0);
    }
    fflush(stdout);
}

/* Everything has ended: what keeps the loop running is closed. */
static void on_done(void *ud, struct warm *w)
{
    struct cmd *c = ud;
    (void)w;
    if (c->tty) {
        uv_timer_stop(&c->progress);
        progress_draw(c);
    }
    uv_close((uv_handle_t *)&c->progress, NULL);
    uv_close((uv_handle_t *)&c->sig_int, NULL);
    uv_close((uv_handle_t *)&c->sig_term, NULL);
    fetch_manager_cancel_all(c->fetches);
    upstream_pool_close(c->pool);
}

/* SIGINT or SIGTERM: the warm stops; fetches in flight fail and their temporary files
 * are removed (a fetch commits only a verified file: nothing partial is left). */
static void on_signal(uv_signal_t *s, int signum)
{
    struct cmd *c = s->data;
    if (c->interrupted) return;
    c->interrupted = true;
    fprintf(stderr, "content-cache warm: %s: stopping; nothing partial is kept\n",
            signum == SIGINT ? "interrupted" : "terminated");
    warm_cancel(c->warm);
    fetch_manager_cancel_all(c->fetches);
}

/* ---- the run -------------------------------------------------------------------------------- */

/* --creds are one registry's: true when every reference is for one upstreams entry
 * (upstreams_images_one_entry), else false with why. */
static bool one_registry(const struct upstreams *ups, const struct warm_cmd_args *a, char *why,
                         size_t why_len)
{
    size_t other = 0;
    if (upstreams_images_one_entry(ups, a->images, a->n_images, &other)) return true;
    snprintf(why, why_len,
             "--creds%s are one registry's, and %s and %s are for two: give each "
             "registry its login in an --authfile",
             a->creds_file ? "-file's" : "", a->images[0], a->images[other]);
    return false;
}

/* Before any warm: what the loop holds is closed, and the loop runs out. */
static void stop_early(struct fetch_manager *fetches, struct upstream_pool *pool, uv_loop_t *loop)
{
    fetch_manager_cancel_all(fetches);
    upstream_pool_close(pool);
    uv_run(loop, UV_RUN_DEFAULT);
}

int warm_cmd_run(const struct config *cfg, const struct warm_cmd_args *a,
                 const char *builtin_policies)
{
    char err[1024];
    struct creds creds;
    if (creds_load(&creds, a, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache warm: %s\n", err);
        creds_free(&creds);
        return WARM_EXIT_USAGE;
    }
    if (cfg->has_contentcaches || cfg->n_upstreams == 0) {
        fprintf(stderr,
                "content-cache warm: %s is not a cache's config (no downstream "
                "upstreams to warm from)\n",
                a->config);
        creds_free(&creds);
        return WARM_EXIT_USAGE;
    }
    /* The warm's own lines say what happened and what failed (the log would say it
     * again): the log keeps its errors, or everything at level debug. */
    struct log_options lo = config_log_options(cfg);
    if (lo.level == NULL || strcmp(lo.level, "debug") != 0) lo.level = "error";
    log_configure(&lo);
    signal(SIGPIPE, SIG_IGN);

    int code = WARM_EXIT_RUNTIME;
    struct store *store = NULL;
    struct policy_engine *pe = NULL;
    struct process proc;
    struct upstreams *ups = NULL;
    struct fetch_manager *fetches = NULL;
    struct manifest_service *manifests = NULL;
    struct warm *warm = NULL;
    struct cmd c = {.args = a, .creds = &creds, .cfg = cfg};
    process_init(&proc, cfg);
    if (store_open(cfg->storage_root, &store, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache warm: %s\n", err);
        goto out;
    }
    /* The upstream order of a pull: the select_upstream policy. */
    if (policy_engine_new(cfg, builtin_policies, &pe, err, sizeof(err)) != 0) {
        fprintf(stderr, "content-cache warm: policies: %s\n", err);
        code = WARM_EXIT_FAILED;
        goto out;
    }
    if (process_pool(&proc, &c.pool) != 0) goto out;
    ups = upstreams_new(cfg, c.pool);
    fetches = fetch_manager_new(proc.loop, store, c.pool);
    manifests = ups ? manifest_service_new(proc.loop, store, ups) : NULL;
    if (ups == NULL || fetches == NULL || manifests == NULL) {
        fprintf(stderr, "content-cache warm: out of memory\n");
        goto out;
    }
    if ((a->creds != NULL || a->creds_file != NULL) && !one_registry(ups, a, err, sizeof(err))) {
        fprintf(stderr, "content-cache warm: %s\n", err);
        code = WARM_EXIT_USAGE;
        stop_early(fetches, c.pool, proc.loop);
        goto out;
    }
    upstreams_set_policy(ups, pe);
    c.adapters.pe = pe;
    manifest_service_set_auth(manifests, cfg, NULL, NULL);
    c.fetches = fetches;
    c.tty = !a->json && isatty(STDOUT_FILENO);
    struct winsize ws;
    c.columns =
        c.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;

    struct warm_env env = {.loop = proc.loop,
                           .cfg = cfg,
                           .store = store,
                           .fetches = fetches,
                           .manifests = manifests,
                           .upstreams = ups,
                           .admit = cmd_admit,
                           .admit_ud = &c};
    struct warm_opts opts = {.jobs = a->jobs,
                             .platforms = a->platforms,
                             .n_platforms = a->n_platforms,
                             .authorization = cmd_authorization,
                             .on_image_done = on_image_done,
                             .on_done = on_done,
                             .ud = &c};
    int rc = warm_start(&env, &opts, a->images, a->n_images, &warm, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "content-cache warm: %s\n", err);
        code = rc == -EINVAL ? WARM_EXIT_USAGE : WARM_EXIT_RUNTIME;
        stop_early(fetches, c.pool, proc.loop);
        goto out;
    }
    c.warm = warm;
    uv_timer_init(proc.loop, &c.progress);
    c.progress.data = &c;
    if (c.tty) uv_timer_start(&c.progress, on_progress_timer, 0, PROGRESS_MS);
    uv_signal_init(proc.loop, &c.sig_int);
    uv_signal_init(proc.loop, &c.sig_term);
    c.sig_int.data = c.sig_term.data = &c;
    uv_signal_start(&c.sig_int, on_signal, SIGINT);
    uv_signal_start(&c.sig_term, on_signal, SIGTERM);
    uv_run(proc.loop, UV_RUN_DEFAULT);

    if (a->json) {
        char *buf = malloc(1u << 20);
        struct textbuf tb;
        if (buf != NULL) {
            textbuf_init(&tb, buf, 1u << 20);
            warm_status_json(warm, &tb);
            fputs(tb.buf, stdout);
            free(buf);
        }
    }
    size_t failed = warm_failed_count(warm);
    for (size_t i = 0; i < warm_image_count(warm); i++) {
        struct warm_image_status s;
        warm_image(warm, i, &s);
        if (s.state == WARM_FAILED)
            fprintf(stderr, "content-cache warm: %s: %s\n", s.reference, s.error);
    }
    if (failed > 0)
        fprintf(stderr, "content-cache warm: %zu of %zu references not warmed\n", failed,
                warm_image_count(warm));
    code = failed > 0 || c.interrupted ? WARM_EXIT_FAILED : WARM_EXIT_OK;
out:
    warm_free(warm);
    manifest_service_free(manifests);
    if (fetches != NULL) fetch_manager_free(fetches);
    upstreams_free(ups);
    policy_engine_free(pe);
    store_close(store);
    creds_free(&creds);
    uv_loop_close(proc.loop);
    return code;
}
