/*
 * content_cache_policy.c: the policy engine as a Lua 5.4 module, for the busted specs.
 *
 * The specs load policies through the engine the cache runs (lua/policy.c on
 * lua/policy_vm.c): the same sandbox, the same require, the same budget of steps, deadline
 * and memory cap, the same checks of what a file returns. A spec's values cross into the
 * engine's own Lua state and back by copy: nil, booleans, numbers (integers stay
 * integers), strings and tables of those (at most COPY_DEPTH deep; no functions, no
 * cycles), so a spec cannot hand a policy anything the cache could not.
 *
 *   local policy = require("content_cache_policy")
 *   local engine = policy.new({
 *       builtin = "policies",               -- the built-in directory (default.lua)
 *       dropin = "/etc/content-cache/p",    -- the files of a policydir, in the cache's order
 *       files = { "examples/x.lua" },       -- or exactly these files (require also finds
 *                                           -- modules beside the first)
 *       config = { blobttl = 86400, upstreams = { { originhost = "https://o",
 *                  upstreamhosts = { "https://a" } } }, log = { formatter = "json",
 *                  fields = { { key = "k", value = "v" } } }, storage_root = "/r" },
 *       now = 1795820400.5,                 -- cache.now() (default: the wall clock)
 *       instructions = 1000000, memory = 33554432,  -- default: the cache's limits
 *   })
 *   engine:call("blob_ttl", blob)   -> what the hook returned; a failed call (error,
 *                                      budget, memory cap) raises "<hook> failed: <why>"
 *   engine:try("blob_ttl", blob)    -> true, results... | false, why
 *   engine:has(h), engine:builtin(h), engine:shipped(h), engine:errors(h)
 *   engine:now(), engine:set_now(t), engine:advance(seconds)
 *   engine:lines()                  -> { {level=, msg=}, ... }: cache.log, print and the
 *                                      engine's lines about failed hooks, in order
 *   engine:memory()                 -> bytes the state holds
 *   engine:reload()                 -> true | false, why (the files as they are now)
 * policy.new raises the engine's error (file and line) when a file does not load.
 */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua/policy.h"
#include "lua/policy_settings.h"

#define ENGINE_MT "content_cache_policy.engine"
#define COPY_DEPTH 32
#define LINES_MAX 10000

struct line {
    enum log_level level;
    char *text;
};

struct module_engine {
    struct policy_engine *pe;
    bool fixed_clock;
    double now;
    struct line *lines;
    size_t n_lines;
};

/* ---- copying values between two Lua states ----------------------------------------------- */

/*
 * Pushes onto `to` a copy of the value at `idx` of `from`. Raises an error in `to` (the
 * state that is running the copy's caller) for a value that cannot cross.
 */
static void copy_value(lua_State *from, int idx, lua_State *to, int depth)
{
    idx = lua_absindex(from, idx);
    luaL_checkstack(to, 4, "copying a value");
    switch (lua_type(from, idx)) {
    case LUA_TNIL:
        lua_pushnil(to);
        break;
    case LUA_TBOOLEAN:
        lua_pushboolean(to, lua_toboolean(from, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(from, idx))
            lua_pushinteger(to, lua_tointeger(from, idx));
        else
            lua_pushnumber(to, lua_tonumber(from, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(from, idx, &len);
        lua_pushlstring(to, s, len);
        break;
    }
    case LUA_TTABLE:
        if (depth >= COPY_DEPTH)
            luaL_error(to, "a table nested more than %d deep (or a cycle) cannot be copied",
                       COPY_DEPTH);
        luaL_checkstack(from, 3, "copying a table");
        lua_newtable(to);
        lua_pushnil(from);
        while (lua_next(from, idx)) {
            copy_value(from, -2, to, depth + 1);
            copy_value(from, -1, to, depth + 1);
            lua_rawset(to, -3);
            lua_pop(from, 1);
        }
        break;
    default:
        luaL_error(to, "a %s cannot be copied between the spec and the engine",
                   luaL_typename(from, idx));
    }
}

/* ---- the engine's clock and lines -------------------------------------------------------------
 */

static double module_clock(void *ud)
{
    return ((struct module_engine *)ud)->now;
}

static void module_log(void *ud, enum log_level level, const char *text)
{
    struct module_engine *me = ud;
    struct line *grown;

    if (me->n_lines >= LINES_MAX) return;
    grown = realloc(me->lines, (me->n_lines + 1) * sizeof *me->lines);
    if (grown == NULL) return;
    me->lines = grown;
    if ((me->lines[me->n_lines].text = strdup(text)) == NULL) return;
    me->lines[me->n_lines++].level = level;
}

/* ---- settings from a spec's table ------------------------------------------------------------ */

/* strdup of t[key] when it is a string, else NULL. *failed on allocation failure. */
static char *field_string(lua_State *L, int t, const char *key, bool *failed)
{
    char *copy = NULL;

    if (lua_getfield(L, t, key) == LUA_TSTRING && (copy = strdup(lua_tostring(L, -1))) == NULL)
        *failed = true;
    lua_pop(L, 1);
    return copy;
}

static bool settings_upstreams(lua_State *L, int list, struct policy_settings *s)
{
    lua_Integer n = luaL_len(L, list);

    if (n <= 0) return true;
    if ((s->upstreams = calloc((size_t)n, sizeof *s->upstreams)) == NULL) return false;
    for (lua_Integer i = 1; i <= n; i++) {
        struct policy_upstream *u = &s->upstreams[s->n_upstreams++];
        bool failed = false;
        int entry;

        entry = lua_gettop(L) + 1;
        if (lua_geti(L, list, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            s->n_upstreams--;
            continue;
        }
        u->originhost = field_string(L, entry, "originhost", &failed);
        if (lua_getfield(L, entry, "upstreamhosts") == LUA_TTABLE) {
            lua_Integer k = luaL_len(L, -1);
            if (k > 0 && (u->upstreamhosts = calloc((size_t)k, sizeof(char *))) == NULL)
                failed = true;
            for (lua_Integer j = 1; !failed && j <= k; j++) {
                if (lua_geti(L, -1, j) == LUA_TSTRING &&
                    (u->upstreamhosts[u->n_upstreamhosts++] = strdup(lua_tostring(L, -1))) == NULL)
                    failed = true;
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 2);
        if (failed) return false;
    }
    return true;
}

static bool settings_log(lua_State *L, int log, struct policy_settings *s)
{
    bool failed = false;
    lua_Integer n;

    s->log_level = field_string(L, log, "level", &failed);
    s->log_formatter = field_string(L, log, "formatter", &failed);
    if (lua_getfield(L, log, "fields") == LUA_TTABLE && (n = luaL_len(L, -1)) > 0) {
        if ((s->log_fields = calloc((size_t)n, sizeof *s->log_fields)) == NULL) failed = true;
        for (lua_Integer i = 1; !failed && i <= n; i++) {
            if (lua_geti(L, -1, i) == LUA_TTABLE) {
                struct policy_field *f = &s->log_fields[s->n_log_fields++];
                f->key = field_string(L, lua_gettop(L), "key", &failed);
                f->value = field_string(L, lua_gettop(L), "value", &failed);
                if (f->key == NULL || f->value == NULL) failed = true;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return !failed;
}

/* The settings of opts.config (a table, or nil for none); raises on a wrong shape. */
static struct policy_settings *settings_from(lua_State *L, int opts)
{
    struct policy_settings *s = calloc(1, sizeof *s);
    bool ok = s != NULL, failed = false;
    int config;

    if (!ok) luaL_error(L, "out of memory");
    if (lua_getfield(L, opts, "config") != LUA_TTABLE) {
        lua_pop(L, 1);
        return s;
    }
    config = lua_gettop(L);
    if (lua_getfield(L, config, "blobttl") == LUA_TNUMBER) {
        double secs = lua_tonumber(L, -1);
        s->has_blobttl = secs > 0;
        s->blobttl_ns = secs > 0 ? (uint64_t)llround(secs * 1e9) : 0;
    }
    lua_pop(L, 1);
    s->storage_root = field_string(L, config, "storage_root", &failed);
    s->policydir = field_string(L, config, "policydir", &failed);
    if (lua_getfield(L, config, "upstreams") == LUA_TTABLE)
        ok = ok && settings_upstreams(L, lua_gettop(L), s);
    lua_pop(L, 1);
    if (lua_getfield(L, config, "log") == LUA_TTABLE) ok = ok && settings_log(L, lua_gettop(L), s);
    lua_pop(L, 2);
    if (!ok || failed) {
        policy_settings_free(s);
        luaL_error(L, "out of memory");
    }
    return s;
}

/* ---- policy.new ------------------------------------------------------------------------------ */

static struct module_engine *check_engine(lua_State *L)
{
    struct module_engine *me = luaL_checkudata(L, 1, ENGINE_MT);

    if (me->pe == NULL) luaL_error(L, "the engine is closed");
    return me;
}

static int engine_new(lua_State *L)
{
    const char *builtin, *dropin;
    struct policy_settings *settings;
    struct module_engine *me;
    const char **files = NULL;
    size_t n_files = 0;
    char err[2048];
    int rc;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "builtin");
    builtin = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "dropin");
    dropin = luaL_optstring(L, -1, NULL);
    if (lua_getfield(L, 1, "files") == LUA_TTABLE) {
        int list = lua_gettop(L);
        n_files = (size_t)luaL_len(L, list);
        files = lua_newuserdatauv(L, (n_files ? n_files : 1) * sizeof *files, 0);
        for (size_t i = 0; i < n_files; i++) {
            lua_geti(L, list, (lua_Integer)i + 1);
            files[i] = luaL_checkstring(L, -1); /* opts.files keeps the string alive */
            lua_pop(L, 1);
        }
    }

    me = lua_newuserdatauv(L, sizeof *me, 0);
    memset(me, 0, sizeof *me);
    luaL_setmetatable(L, ENGINE_MT);
    settings = settings_from(L, 1);
    if (settings->policydir == NULL && dropin != NULL) settings->policydir = strdup(dropin);
    if (settings->policydir == NULL && n_files > 0) {
        /* require finds modules beside the files, as it finds them in a policydir. */
        const char *slash = strrchr(files[0], '/');
        settings->policydir = slash ? strndup(files[0], (size_t)(slash - files[0])) : strdup(".");
    }
    rc = policy_engine_new_custom(settings, builtin, files, files ? n_files : 0, &me->pe, err,
                                  sizeof err);
    if (rc != 0) return luaL_error(L, "%s", err);
    policy_engine_set_log(me->pe, module_log, me);
    if (lua_getfield(L, 1, "now") == LUA_TNUMBER) {
        me->fixed_clock = true;
        me->now = lua_tonumber(L, -1);
        policy_engine_set_clock(me->pe, module_clock, me);
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "instructions");
    lua_getfield(L, 1, "memory");
    policy_engine_set_limits(me->pe, (unsigned long)luaL_optinteger(L, -2, 0),
                             (size_t)luaL_optinteger(L, -1, 0));
    lua_pop(L, 2);
    return 1;
}

/* ---- engine:call --------------------------------------------------------------------------- */

struct module_call {
    lua_State *spec; /* the spec's state, where the arguments are and the results go */
    int first, n;    /* the arguments: spec stack [first, first + n) */
    int results;     /* how many were copied back */
};

static int call_push(lua_State *L, void *ud)
{
    struct module_call *c = ud;

    luaL_checkstack(L, c->n + 4, "hook arguments");
    for (int i = 0; i < c->n; i++)
        copy_value(c->spec, c->first + i, L, 0);
    return c->n;
}

static void call_take(lua_State *L, int nresults, void *ud)
{
    struct module_call *c = ud;
    int top = lua_gettop(L);

    luaL_checkstack(c->spec, nresults + 4, "hook results");
    for (int i = 0; i < nresults; i++)
        copy_value(L, top - nresults + 1 + i, c->spec, 0);
    c->results = nresults;
}

/* Runs the hook; on 0 its results are on the spec's stack. */
static int run_hook(lua_State *L, struct module_engine *me, char *msg, size_t msglen)
{
    struct module_call c = {.spec = L, .first = 3, .n = lua_gettop(L) - 2};
    const char *hook = luaL_checkstring(L, 2);
    int base = lua_gettop(L);
    int rc = policy_call_named(me->pe, hook, call_push, call_take, &c, msg, msglen);

    if (rc != 0) lua_settop(L, base); /* results copied before a failed check */
    return rc == 0 ? c.results : rc;
}

static int engine_call(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    char msg[4096];
    int n = run_hook(L, me, msg, sizeof msg);

    if (n < 0) return luaL_error(L, "%s failed: %s", lua_tostring(L, 2), msg);
    return n;
}

static int engine_try(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    int base = lua_gettop(L);
    char msg[4096];
    int n = run_hook(L, me, msg, sizeof msg);

    if (n < 0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, base + 1);
    return n + 1;
}

/* ---- the rest of the engine's methods ------------------------------------------------------- */

static enum policy_hook check_hook(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);

    for (int h = 0; h < POLICY_HOOK_COUNT; h++)
        if (strcmp(policy_hook_name((enum policy_hook)h), name) == 0) return (enum policy_hook)h;
    return (enum policy_hook)luaL_argerror(L, idx, "not the name of a hook");
}

static int engine_has(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushboolean(L, policy_has_hook(me->pe, check_hook(L, 2)));
    return 1;
}

static int engine_builtin(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushboolean(L, policy_hook_is_builtin(me->pe, check_hook(L, 2)));
    return 1;
}

static int engine_shipped(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushboolean(L, policy_hook_is_shipped(me->pe, check_hook(L, 2)));
    return 1;
}

static int engine_errors(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushinteger(L, (lua_Integer)policy_error_count(me->pe, check_hook(L, 2)));
    return 1;
}

static double wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int engine_now(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushnumber(L, me->fixed_clock ? me->now : wall_clock());
    return 1;
}

static int engine_set_now(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    me->now = luaL_checknumber(L, 2);
    me->fixed_clock = true;
    policy_engine_set_clock(me->pe, module_clock, me);
    return 0;
}

static int engine_advance(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    if (!me->fixed_clock) {
        me->now = wall_clock();
        me->fixed_clock = true;
        policy_engine_set_clock(me->pe, module_clock, me);
    }
    me->now += luaL_checknumber(L, 2);
    return 0;
}

static int engine_lines(lua_State *L)
{
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    struct module_engine *me = check_engine(L);

    lua_createtable(L, (int)me->n_lines, 0);
    for (size_t i = 0; i < me->n_lines; i++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, levels[me->lines[i].level]);
        lua_setfield(L, -2, "level");
        lua_pushstring(L, me->lines[i].text);
        lua_setfield(L, -2, "msg");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int engine_memory(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    lua_pushinteger(L, (lua_Integer)policy_engine_memory(me->pe));
    return 1;
}

static int engine_reload(lua_State *L)
{
    struct module_engine *me = check_engine(L);
    char err[2048];

    if (policy_engine_reload(me->pe, NULL, err, sizeof err) != 0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int engine_gc(lua_State *L)
{
    struct module_engine *me = luaL_checkudata(L, 1, ENGINE_MT);

    policy_engine_free(me->pe);
    me->pe = NULL;
    for (size_t i = 0; i < me->n_lines; i++)
        free(me->lines[i].text);
    free(me->lines);
    me->lines = NULL;
    me->n_lines = 0;
    return 0;
}

int luaopen_content_cache_policy(lua_State *L);

int luaopen_content_cache_policy(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"call", engine_call},       {"try", engine_try},
        {"has", engine_has},         {"builtin", engine_builtin},
        {"shipped", engine_shipped}, {"errors", engine_errors},
        {"now", engine_now},         {"set_now", engine_set_now},
        {"advance", engine_advance}, {"lines", engine_lines},
        {"memory", engine_memory},   {"reload", engine_reload},
        {"close", engine_gc},        {NULL, NULL},
    };
    static const luaL_Reg functions[] = {{"new", engine_new}, {NULL, NULL}};

    if (luaL_newmetatable(L, ENGINE_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, engine_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_pushinteger(L, POLICY_DEFAULT_INSTRUCTIONS);
    lua_setfield(L, -2, "DEFAULT_INSTRUCTIONS");
    lua_pushinteger(L, (lua_Integer)POLICY_DEFAULT_MEMORY);
    lua_setfield(L, -2, "DEFAULT_MEMORY");
    return 1;
}
