/*
 * policy.c: the policy engine: the states it builds and swaps (policy_vm.h), the hook
 * calls with their arguments and the checks of what they return, and what happens when
 * one fails (counted, logged at a bounded rate, an error for the caller).
 */
#include "lua/policy.h"

#ifndef CC_POLICY_INSTALL_DIR
#error "CC_POLICY_INSTALL_DIR must name the installed policies/ (CMakeLists.txt sets it)"
#endif

#include <errno.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/log.h"
#include "lua/policy_settings.h"
#include "lua/policy_vm.h"

_Static_assert(POLICY_HOOK_COUNT <= POLICY_VM_MAX_HOOKS, "the vm has room for every hook");

struct hook_failures {
    bool logged;        /* a failure of this hook has been logged */
    double last_logged; /* when */
    uint64_t unlogged;  /* failures since then that were not */
};

struct policy_engine {
    struct policy_vm *vm;
    struct policy_settings *settings;
    char *builtin_dir;
    double (*clock)(void *ud);
    void *clock_ud;
    unsigned long instructions;
    size_t memory;

    uint64_t errors[POLICY_HOOK_COUNT];
    struct hook_failures failures[POLICY_HOOK_COUNT];

    /* cache.log's window: lines written in it, lines dropped. */
    bool script_window_open;
    double script_window_start;
    unsigned script_lines;
    uint64_t script_dropped;
};

static const char *const hook_names[POLICY_HOOK_COUNT] = {
    [POLICY_HOOK_SELECT_UPSTREAM] = "select_upstream", [POLICY_HOOK_BLOB_TTL] = "blob_ttl",
    [POLICY_HOOK_FORMAT_LOG] = "format_log",           [POLICY_HOOK_EVICT] = "evict",
    [POLICY_HOOK_SELECT_CACHE] = "select_cache",
};

const char *policy_hook_name(enum policy_hook h)
{
    return (unsigned)h < POLICY_HOOK_COUNT ? hook_names[h] : "?";
}

/* ---- the engine ------------------------------------------------------------------------- */

static bool has_default_policy(const char *dir)
{
    char path[PATH_MAX];
    struct stat st;
    int n = snprintf(path, sizeof path, "%s/default.lua", dir);

    return n > 0 && (size_t)n < sizeof path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The directory of the built-in policies: the one given, else the installed one. Never
 * the build tree's: an installed binary runs the installed policies. */
static int builtin_dir_find(const char *given, char **out, char *err, size_t errlen)
{
    const char *dir = given ? given : CC_POLICY_INSTALL_DIR;
    if (!has_default_policy(dir)) {
        snprintf(err, errlen, "policy: no default.lua in %s (the built-in policies)", dir);
        return -ENOENT;
    }
    if ((*out = strdup(dir)) == NULL) {
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* ---- services for the Lua side ---------------------------------------------------------- */

static double engine_now(struct policy_engine *pe)
{
    struct timespec ts;

    if (pe->clock) return pe->clock(pe->clock_ud);
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* True when `now` is outside the interval that started at `start` (or the clock went back). */
static bool interval_over(double start, double now)
{
    return now < start || now - start >= POLICY_LOG_INTERVAL;
}

/* cache.log and print: at most POLICY_LOG_BURST lines per window, the rest counted. */
static void script_log(void *ud, enum log_level level, const char *msg)
{
    struct policy_engine *pe = ud;
    double now;

    if (!log_enabled(level)) return;
    now = engine_now(pe);
    if (!pe->script_window_open || interval_over(pe->script_window_start, now)) {
        if (pe->script_dropped)
            log_msg(LOG_WARN,
                    "policy: %" PRIu64 " cache.log lines not written (more than %d in %g s)",
                    pe->script_dropped, POLICY_LOG_BURST, POLICY_LOG_INTERVAL);
        pe->script_window_open = true;
        pe->script_window_start = now;
        pe->script_lines = 0;
        pe->script_dropped = 0;
    }
    if (pe->script_lines >= POLICY_LOG_BURST) {
        pe->script_dropped++;
        return;
    }
    pe->script_lines++;
    log_msg(level, "policy: %s", msg);
}

static double host_now(void *ud)
{
    return engine_now(ud);
}

/* A state with the policies loaded, for these settings. */
static int engine_vm_new(struct policy_engine *pe, struct policy_settings *settings,
                         struct policy_vm **out, char *err, size_t errlen)
{
    struct policy_vm_options options = {
        .builtin_dir = pe->builtin_dir,
        .dropin_dir = settings->policydir,
        .hook_names = hook_names,
        .n_hooks = POLICY_HOOK_COUNT,
        .instructions = pe->instructions,
        .memory_bytes = pe->memory,
        .host = {.now = host_now, .log = script_log, .ud = pe},
        .push_config = policy_settings_push,
        .config_ud = settings,
    };

    return policy_vm_new(&options, out, err, errlen);
}

int policy_engine_new(const struct config *cfg, const char *builtin_dir, struct policy_engine **out,
                      char *err, size_t errlen)
{
    struct policy_engine *pe;
    int rc;

    *out = NULL;
    if (errlen) err[0] = '\0';
    if ((pe = calloc(1, sizeof *pe)) == NULL) {
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    pe->instructions = POLICY_DEFAULT_INSTRUCTIONS;
    pe->memory = POLICY_DEFAULT_MEMORY;
    rc = builtin_dir_find(builtin_dir, &pe->builtin_dir, err, errlen);
    if (rc == 0 && (pe->settings = policy_settings_new(cfg)) == NULL) {
        snprintf(err, errlen, "policy: out of memory");
        rc = -ENOMEM;
    }
    if (rc == 0) rc = engine_vm_new(pe, pe->settings, &pe->vm, err, errlen);
    if (rc != 0) {
        policy_engine_free(pe);
        return rc;
    }
    *out = pe;
    return 0;
}

int policy_engine_reload(struct policy_engine *pe, const struct config *cfg, char *err,
                         size_t errlen)
{
    struct policy_settings *settings = pe->settings;
    struct policy_vm *vm;
    int rc;

    if (errlen) err[0] = '\0';
    if (cfg && (settings = policy_settings_new(cfg)) == NULL) {
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    rc = engine_vm_new(pe, settings, &vm, err, errlen);
    if (rc != 0) {
        if (settings != pe->settings) policy_settings_free(settings);
        return rc;
    }
    policy_vm_free(pe->vm);
    pe->vm = vm;
    if (settings != pe->settings) {
        policy_settings_free(pe->settings);
        pe->settings = settings;
    }
    return 0;
}

void policy_engine_free(struct policy_engine *pe)
{
    if (pe == NULL) return;
    policy_vm_free(pe->vm);
    policy_settings_free(pe->settings);
    free(pe->builtin_dir);
    free(pe);
}

void policy_engine_set_clock(struct policy_engine *pe, double (*now)(void *ud), void *ud)
{
    pe->clock = now;
    pe->clock_ud = ud;
}

void policy_engine_set_limits(struct policy_engine *pe, unsigned long instructions,
                              size_t memory_bytes)
{
    pe->instructions = instructions ? instructions : POLICY_DEFAULT_INSTRUCTIONS;
    pe->memory = memory_bytes ? memory_bytes : POLICY_DEFAULT_MEMORY;
    policy_vm_set_memory_limit(pe->vm, pe->memory);
}

size_t policy_engine_memory(const struct policy_engine *pe)
{
    return policy_vm_memory(pe->vm);
}

bool policy_hook_is_builtin(const struct policy_engine *pe, enum policy_hook h)
{
    return (unsigned)h < POLICY_HOOK_COUNT && policy_vm_hook_is_builtin(pe->vm, h);
}

bool policy_has_hook(const struct policy_engine *pe, enum policy_hook h)
{
    return (unsigned)h < POLICY_HOOK_COUNT && policy_vm_has_hook(pe->vm, h);
}

uint64_t policy_error_count(const struct policy_engine *pe, enum policy_hook h)
{
    return (unsigned)h < POLICY_HOOK_COUNT ? pe->errors[h] : 0;
}

void policy_free_list(char **list, size_t n)
{
    if (list == NULL) return;
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Counts a failed call and logs it, unless one of the hook was logged less than
 * POLICY_LOG_INTERVAL ago. */
static void hook_failed(struct policy_engine *pe, enum policy_hook h, const char *msg)
{
    struct hook_failures *f = &pe->failures[h];
    double now = engine_now(pe);

    pe->errors[h]++;
    if (f->logged && !interval_over(f->last_logged, now)) {
        f->unlogged++;
        return;
    }
    if (f->unlogged)
        log_msg(LOG_WARN,
                "policy: %s failed, the built-in default is used (and %" PRIu64
                " more failures not logged): %s",
                hook_names[h], f->unlogged, msg);
    else
        log_msg(LOG_WARN, "policy: %s failed, the built-in default is used: %s", hook_names[h],
                msg);
    f->logged = true;
    f->last_logged = now;
    f->unlogged = 0;
}

/* ---- calling a hook --------------------------------------------------------------------- */

/* What every hook call has: which hook, how to push its arguments, how to take its result
 * (raising policy_vm_bad_return when it is wrong). Each hook's call struct starts with it. */
struct hook_call {
    enum policy_hook hook;
    int (*push_args)(lua_State *L, struct hook_call *call);
    void (*take_result)(lua_State *L, struct hook_call *call);
};

static int hook_trampoline(lua_State *L)
{
    struct hook_call *call = lua_touserdata(L, 1);

    policy_vm_push_hook(L, call->hook);
    lua_call(L, call->push_args(L, call), 1);
    call->take_result(L, call);
    return 0;
}

static int hook_run(struct policy_engine *pe, struct hook_call *call, unsigned long instructions)
{
    char msg[2048];
    int rc;

    if (!policy_has_hook(pe, call->hook)) return -ENOENT;
    rc = policy_vm_call(pe->vm, hook_trampoline, call, instructions, msg, sizeof msg);
    if (rc != 0) hook_failed(pe, call->hook, msg);
    return rc;
}

static void set_string(lua_State *L, const char *key, const char *value)
{
    if (value == NULL) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

static void set_number(lua_State *L, const char *key, double value)
{
    lua_pushnumber(L, value);
    lua_setfield(L, -2, key);
}

static void push_uint(lua_State *L, uint64_t value)
{
    if (value <= (uint64_t)LUA_MAXINTEGER)
        lua_pushinteger(L, (lua_Integer)value);
    else
        lua_pushnumber(L, (double)value);
}

/* Pushes {digest, size, last_pulled, created, repositories}. */
static void push_blob(lua_State *L, const struct policy_blob *b)
{
    lua_createtable(L, 0, 5);
    set_string(L, "digest", b->digest);
    push_uint(L, b->size);
    lua_setfield(L, -2, "size");
    set_number(L, "last_pulled", b->last_pulled);
    if (b->has_created) set_number(L, "created", b->created);
    lua_createtable(L, b->repositories ? (int)b->n_repositories : 0, 0);
    for (size_t i = 0; b->repositories && i < b->n_repositories; i++) {
        lua_pushstring(L, b->repositories[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "repositories");
}

/* The length of the list the hook returned (at the top), or a bad return. */
static lua_Integer result_list_len(lua_State *L, enum policy_hook h, const char *what)
{
    if (!lua_istable(L, -1))
        policy_vm_bad_return(L, "%s returned a %s, expected a list of %s", hook_names[h],
                             luaL_typename(L, -1), what);
    return luaL_len(L, -1);
}

/* ---- select_upstream ---------------------------------------------------------------------- */

struct select_call {
    struct hook_call base;
    const struct policy_request *req;
    size_t index;
    const struct policy_upstream *upstream;
    char **urls; /* up to 1 + n_upstreamhosts */
    size_t n_urls;
};

static int select_push(lua_State *L, struct hook_call *call)
{
    struct select_call *c = (struct select_call *)call;

    lua_createtable(L, 0, 5);
    set_string(L, "method", c->req->method);
    set_string(L, "repository", c->req->repository);
    set_string(L, "reference", c->req->reference);
    set_string(L, "digest", c->req->digest);
    set_string(L, "kind", c->req->kind);
    policy_vm_push_config(L);
    lua_getfield(L, -1, "upstreams");
    lua_geti(L, -1, (lua_Integer)c->index + 1);
    lua_replace(L, -3);
    lua_pop(L, 1);
    return 2;
}

/* The configured URL of the entry equal to url, or NULL. */
static const char *upstream_url_find(const struct policy_upstream *u, const char *url)
{
    if (u->originhost && strcmp(u->originhost, url) == 0) return u->originhost;
    for (size_t i = 0; i < u->n_upstreamhosts; i++)
        if (strcmp(u->upstreamhosts[i], url) == 0) return u->upstreamhosts[i];
    return NULL;
}

static void select_take(lua_State *L, struct hook_call *call)
{
    struct select_call *c = (struct select_call *)call;
    lua_Integer len = result_list_len(L, call->hook, "base URLs");

    if (len < 1) policy_vm_bad_return(L, "select_upstream returned an empty list");
    c->urls = calloc(c->upstream->n_upstreamhosts + 1, sizeof *c->urls);
    if (c->urls == NULL) policy_vm_out_of_memory(L);
    for (lua_Integer i = 1; i <= len; i++) {
        const char *url;
        bool seen = false;

        if (lua_geti(L, -1, i) != LUA_TSTRING)
            policy_vm_bad_return(L,
                                 "select_upstream returned a list whose item %lld is a %s, "
                                 "expected a string",
                                 (long long)i, luaL_typename(L, -1));
        url = upstream_url_find(c->upstream, lua_tostring(L, -1));
        if (url == NULL)
            policy_vm_bad_return(L,
                                 "select_upstream returned \"%.200s\", which is neither the "
                                 "originhost nor an upstreamhost of upstreams[%zu]",
                                 lua_tostring(L, -1), c->index + 1);
        for (size_t j = 0; j < c->n_urls && !seen; j++)
            seen = strcmp(c->urls[j], url) == 0;
        if (!seen) {
            if ((c->urls[c->n_urls] = strdup(url)) == NULL) policy_vm_out_of_memory(L);
            c->n_urls++;
        }
        lua_pop(L, 1);
    }
}

int policy_select_upstream(struct policy_engine *pe, const struct policy_request *req,
                           size_t upstream_index, char ***urls_out, size_t *n_out)
{
    struct select_call c = {.base = {POLICY_HOOK_SELECT_UPSTREAM, select_push, select_take},
                            .req = req,
                            .index = upstream_index};
    int rc;

    *urls_out = NULL;
    *n_out = 0;
    if (!policy_has_hook(pe, POLICY_HOOK_SELECT_UPSTREAM)) return -ENOENT;
    if (upstream_index >= pe->settings->n_upstreams) return -ERANGE;
    c.upstream = &pe->settings->upstreams[upstream_index];
    rc = hook_run(pe, &c.base, pe->instructions);
    if (rc != 0) {
        policy_free_list(c.urls, c.n_urls);
        return rc;
    }
    *urls_out = c.urls;
    *n_out = c.n_urls;
    return 0;
}

/* ---- blob_ttl ------------------------------------------------------------------------------ */

struct ttl_call {
    struct hook_call base;
    const struct policy_blob *blob;
    bool has_ttl;
    double ttl;
};

static int ttl_push(lua_State *L, struct hook_call *call)
{
    push_blob(L, ((struct ttl_call *)call)->blob);
    return 1;
}

static void ttl_take(lua_State *L, struct hook_call *call)
{
    struct ttl_call *c = (struct ttl_call *)call;
    double ttl;

    if (lua_isnil(L, -1)) return;
    if (lua_type(L, -1) != LUA_TNUMBER)
        policy_vm_bad_return(L, "blob_ttl returned a %s, expected seconds or nil",
                             luaL_typename(L, -1));
    ttl = lua_tonumber(L, -1);
    if (!(ttl >= 0))
        policy_vm_bad_return(L, "blob_ttl returned %g, expected seconds >= 0 or nil", ttl);
    if (isinf(ttl)) return; /* math.huge: keep it, as nil */
    c->has_ttl = true;
    c->ttl = ttl;
}

int policy_blob_ttl(struct policy_engine *pe, const struct policy_blob *blob, bool *has_ttl,
                    double *ttl_seconds)
{
    struct ttl_call c = {.base = {POLICY_HOOK_BLOB_TTL, ttl_push, ttl_take}, .blob = blob};
    int rc = hook_run(pe, &c.base, pe->instructions);

    *has_ttl = rc == 0 && c.has_ttl;
    *ttl_seconds = *has_ttl ? c.ttl : 0;
    return rc;
}

/* ---- format_log ---------------------------------------------------------------------------- */

struct format_call {
    struct hook_call base;
    const struct log_access_entry *entry;
    char *buf;
    size_t len, out_len;
};

static int format_push(lua_State *L, struct hook_call *call)
{
    const struct log_access_entry *e = ((struct format_call *)call)->entry;

    lua_createtable(L, 0, 14);
    if (e->time > 0) set_number(L, "time", e->time);
    set_string(L, "method", e->method);
    set_string(L, "uri", e->uri);
    set_string(L, "repository", e->repository);
    set_string(L, "digest", e->digest);
    if (e->status > 0) {
        lua_pushinteger(L, e->status);
        lua_setfield(L, -2, "status");
    }
    push_uint(L, e->bytes);
    lua_setfield(L, -2, "bytes");
    if (e->duration_ms >= 0) set_number(L, "duration_ms", e->duration_ms);
    set_string(L, "cache", e->cache);
    set_string(L, "upstream", e->upstream);
    set_string(L, "remote_addr", e->remote_addr);
    set_string(L, "user_agent", e->user_agent);
    if (e->incomplete) set_string(L, "incomplete", "true");
    set_string(L, "error", e->error);
    return 1;
}

static void format_take(lua_State *L, struct hook_call *call)
{
    struct format_call *c = (struct format_call *)call;
    const char *line;
    size_t n;

    if (lua_type(L, -1) != LUA_TSTRING)
        policy_vm_bad_return(L, "format_log returned a %s, expected a string",
                             luaL_typename(L, -1));
    line = lua_tolstring(L, -1, &n);
    if (n > c->len - 1) n = c->len - 1;
    memcpy(c->buf, line, n);
    c->buf[n] = '\0';
    c->out_len = n;
}

int policy_format_log(struct policy_engine *pe, const struct log_access_entry *entry, char *buf,
                      size_t len, size_t *out_len)
{
    struct format_call c = {.base = {POLICY_HOOK_FORMAT_LOG, format_push, format_take},
                            .entry = entry,
                            .buf = buf,
                            .len = len};
    int rc;

    *out_len = 0;
    if (len == 0) return -EINVAL;
    buf[0] = '\0';
    rc = hook_run(pe, &c.base, pe->instructions);
    if (rc != 0) {
        buf[0] = '\0';
        return rc;
    }
    *out_len = c.out_len;
    return 0;
}

/* ---- evict --------------------------------------------------------------------------------- */

struct evict_call {
    struct hook_call base;
    const struct policy_blob *cands;
    size_t n;
    uint64_t bytes_needed;
    size_t *by_digest; /* indexes of the candidates with a digest, sorted by it */
    size_t n_by_digest;
    unsigned char *chosen; /* per candidate */
    size_t *victims;       /* up to n */
    size_t n_victims;
};

static int evict_push(lua_State *L, struct hook_call *call)
{
    struct evict_call *c = (struct evict_call *)call;

    luaL_checkstack(L, 4, NULL);
    lua_createtable(L, c->n > INT_MAX ? INT_MAX : (int)c->n, 0);
    for (size_t i = 0; i < c->n; i++) {
        push_blob(L, &c->cands[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    push_uint(L, c->bytes_needed);
    return 2;
}

/* The index of the candidate whose digest is `digest`, or -1. */
static long evict_find(const struct evict_call *c, const char *digest)
{
    size_t lo = 0, hi = c->n_by_digest;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(digest, c->cands[c->by_digest[mid]].digest);
        if (cmp == 0) return (long)c->by_digest[mid];
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

static void evict_take(lua_State *L, struct hook_call *call)
{
    struct evict_call *c = (struct evict_call *)call;
    lua_Integer len = result_list_len(L, call->hook, "digests");

    for (lua_Integer i = 1; i <= len; i++) {
        long at;

        if (lua_geti(L, -1, i) != LUA_TSTRING)
            policy_vm_bad_return(L,
                                 "evict returned a list whose item %lld is a %s, expected a "
                                 "digest",
                                 (long long)i, luaL_typename(L, -1));
        at = evict_find(c, lua_tostring(L, -1));
        if (at >= 0 && !c->chosen[at]) {
            c->chosen[at] = 1;
            c->victims[c->n_victims++] = (size_t)at;
        }
        lua_pop(L, 1);
    }
}

static int compare_digests(const void *a, const void *b, void *cands)
{
    const struct policy_blob *blobs = cands;
    return strcmp(blobs[*(const size_t *)a].digest, blobs[*(const size_t *)b].digest);
}

int policy_evict(struct policy_engine *pe, const struct policy_blob *cands, size_t n,
                 uint64_t bytes_needed, size_t **victims_out, size_t *n_out)
{
    struct evict_call c = {.base = {POLICY_HOOK_EVICT, evict_push, evict_take},
                           .cands = cands,
                           .n = n,
                           .bytes_needed = bytes_needed};
    unsigned long instructions = pe->instructions;
    int rc;

    *victims_out = NULL;
    *n_out = 0;
    if (!policy_has_hook(pe, POLICY_HOOK_EVICT)) return -ENOENT;
    if (n > 0) {
        c.by_digest = malloc(n * sizeof *c.by_digest);
        c.chosen = calloc(n, 1);
        c.victims = malloc(n * sizeof *c.victims);
        if (!c.by_digest || !c.chosen || !c.victims) {
            rc = -ENOMEM;
            goto done;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (cands[i].digest) c.by_digest[c.n_by_digest++] = i;
    if (c.n_by_digest > 1)
        qsort_r(c.by_digest, c.n_by_digest, sizeof *c.by_digest, compare_digests, (void *)cands);

    if (n > (ULONG_MAX - instructions) / POLICY_EVICT_INSTRUCTIONS_PER_CANDIDATE)
        instructions = ULONG_MAX;
    else
        instructions += n * POLICY_EVICT_INSTRUCTIONS_PER_CANDIDATE;
    rc = hook_run(pe, &c.base, instructions);
    if (rc == 0 && c.n_victims > 0) {
        *victims_out = c.victims;
        *n_out = c.n_victims;
        c.victims = NULL;
    }
done:
    free(c.by_digest);
    free(c.chosen);
    free(c.victims);
    return rc;
}

/* ---- select_cache (the front) --------------------------------------------------------- */

struct cache_call {
    struct hook_call base;
    const struct policy_request *req;
    const char *remote_addr, *user, *user_cache;
    const struct policy_cache *caches;
    size_t n;
    long chosen;
};

static int cache_push(lua_State *L, struct hook_call *call)
{
    struct cache_call *c = (struct cache_call *)call;

    luaL_checkstack(L, 5, NULL);
    lua_createtable(L, 0, 5);
    set_string(L, "method", c->req->method);
    set_string(L, "repository", c->req->repository);
    set_string(L, "digest", c->req->digest);
    set_string(L, "kind", c->req->kind);
    set_string(L, "remote_addr", c->remote_addr);
    lua_createtable(L, 0, 2);
    set_string(L, "name", c->user);
    set_string(L, "cache", c->user_cache);
    lua_createtable(L, c->n > INT_MAX ? INT_MAX : (int)c->n, 0);
    for (size_t i = 0; i < c->n; i++) {
        lua_createtable(L, 0, 3);
        set_string(L, "id", c->caches[i].id);
        set_string(L, "name", c->caches[i].name);
        set_string(L, "host", c->caches[i].host);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 3;
}

static void cache_take(lua_State *L, struct hook_call *call)
{
    struct cache_call *c = (struct cache_call *)call;

    c->chosen = -1;
    if (lua_isnil(L, -1)) return;
    if (lua_type(L, -1) != LUA_TSTRING)
        policy_vm_bad_return(L, "select_cache returned a %s, expected a cache's name or nil",
                             luaL_typename(L, -1));
    const char *name = lua_tostring(L, -1);
    for (size_t i = 0; i < c->n; i++) {
        if (c->caches[i].name != NULL && strcmp(c->caches[i].name, name) == 0) {
            c->chosen = (long)i;
            return;
        }
    }
    policy_vm_bad_return(L, "select_cache returned \"%.200s\", which is no registered cache", name);
}

int policy_select_cache(struct policy_engine *pe, const struct policy_request *req,
                        const char *remote_addr, const char *user, const char *user_cache,
                        const struct policy_cache *caches, size_t n, long *chosen)
{
    struct cache_call c = {.base = {POLICY_HOOK_SELECT_CACHE, cache_push, cache_take},
                           .req = req,
                           .remote_addr = remote_addr,
                           .user = user,
                           .user_cache = user_cache,
                           .caches = caches,
                           .n = n,
                           .chosen = -1};
    int rc = hook_run(pe, &c.base, pe->instructions);

    *chosen = rc == 0 ? c.chosen : -1;
    return rc;
}

void policy_render_metrics(const void *policy_engine, struct textbuf *out)
{
    static const char name[] = "content_cache_policy_errors_total";
    metrics_help(out, name, "counter",
                 "Policy hook calls that failed (error, budget, memory, wrong type), by hook; the "
                 "built-in default served those calls.");
    for (int h = 0; h < POLICY_HOOK_COUNT; h++)
        metrics_labelled(out, name, "hook", policy_hook_name((enum policy_hook)h),
                         policy_error_count(policy_engine, (enum policy_hook)h));
}
