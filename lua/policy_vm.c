/*
 * policy_vm.c: one sandboxed Lua state and the policies loaded into it.
 *
 * The state's allocator counts its bytes and refuses to grow past the cap; a count hook
 * charges instructions to the running call and, once the budget is spent, makes every
 * further instruction fail, so that a policy cannot pcall its way past the budget. All
 * work on the state, building it included, runs under lua_pcall: a refused allocation is
 * a Lua error, never a panic.
 */
#include "lua/policy_vm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Instructions between two looks at the budget. */
#define HOOK_PERIOD 1000UL
/* A policy file or module larger than this is refused. */
#define POLICY_FILE_MAX ((size_t)4 << 20)

#define LOADED_KEY "content-cache.policy.loaded"
#define UPSTREAMS_KEY "content-cache.policy.upstreams"

/* Marks a module whose loading has started and not finished (a require loop). */
static char module_loading;

/* ---- memory and budget ------------------------------------------------------------------- */

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct policy_vm *vm = ud;
    size_t old = ptr ? osize : 0;
    void *p;

    if (nsize == 0) {
        free(ptr);
        vm->mem_used -= old;
        return NULL;
    }
    if (nsize > old &&
        (vm->mem_used > vm->mem_limit || nsize - old > vm->mem_limit - vm->mem_used)) {
        vm->mem_refused = true;
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (p == NULL) {
        vm->mem_refused = true;
        return NULL;
    }
    vm->mem_used = vm->mem_used - old + nsize;
    return p;
}

struct policy_vm *policy_vm_of(lua_State *L)
{
    void *ud = NULL;

    lua_getallocf(L, &ud);
    return ud;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    struct policy_vm *vm = policy_vm_of(L);

    (void)ar;
    vm->instr_used += vm->hook_period;
    if (vm->instr_used < vm->instr_limit) return;
    if (!vm->budget_exceeded) {
        vm->budget_exceeded = true;
        vm->hook_period = 1;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    }
    luaL_where(L, 0);
    lua_pushliteral(L, "instruction budget exceeded");
    lua_concat(L, 2);
    lua_error(L);
}

/* Starts a fresh budget for the next piece of work on the state. */
static void budget_start(struct policy_vm *vm, unsigned long instructions)
{
    if (instructions == 0) instructions = 1;
    vm->instr_used = 0;
    vm->instr_limit = instructions;
    vm->budget_exceeded = false;
    vm->hook_period = instructions < HOOK_PERIOD ? instructions : HOOK_PERIOD;
    lua_sethook(vm->L, count_hook, LUA_MASKCOUNT, (int)vm->hook_period);
}

/* ---- protected calls --------------------------------------------------------------------- */

/* The message handler: the error's text and a traceback, except for wrong return values. */
static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    if (policy_vm_of(L)->bad_return) return 1;
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int policy_vm_bad_return(lua_State *L, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    policy_vm_of(L)->bad_return = true;
    lua_pushstring(L, text);
    return lua_error(L);
}

int policy_vm_out_of_memory(lua_State *L)
{
    policy_vm_of(L)->mem_refused = true;
    lua_pushliteral(L, "not enough memory (C side)");
    return lua_error(L);
}

int policy_vm_call(struct policy_vm *vm, lua_CFunction fn, void *ud, unsigned long instructions,
                   char *msg, size_t msglen)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L), status, rc = 0;

    vm->mem_refused = false;
    vm->bad_return = false;
    budget_start(vm, instructions);
    lua_pushcfunction(L, traceback_handler);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    status = lua_pcall(L, 1, 0, base + 1);
    if (status != LUA_OK) {
        const char *text = lua_tostring(L, -1);
        if (msg && msglen)
            snprintf(msg, msglen, "%s%s", text ? text : "(no error message)",
                     vm->mem_refused && status == LUA_ERRMEM
                         ? " (the policy state reached its memory cap)"
                         : "");
        if (status == LUA_ERRMEM)
            rc = -ENOMEM;
        else if (vm->budget_exceeded)
            rc = -ETIMEDOUT;
        else if (vm->bad_return)
            rc = -EINVAL;
        else if (vm->mem_refused)
            rc = -ENOMEM;
        else
            rc = -EIO;
    }
    lua_settop(L, base);
    if (rc != 0) {
        /* A fresh budget for the __gc metamethods a collection may run. */
        budget_start(vm, instructions);
        if (rc == -ENOMEM) lua_gc(L, LUA_GCCOLLECT, 0);
    }
    return rc;
}

/* ---- read-only tables -------------------------------------------------------------------- */

static int readonly_newindex(lua_State *L)
{
    return luaL_error(L, "attempt to modify a read-only table (key '%s')",
                      luaL_tolstring(L, 2, NULL));
}

static int readonly_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

static int readonly_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

static int readonly_pairs(lua_State *L)
{
    lua_pushcfunction(L, readonly_next);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushnil(L);
    return 3;
}

/* Replaces the table at the top of the stack by a read-only view of it, nested tables too. */
static void make_readonly(lua_State *L)
{
    int raw = lua_gettop(L);

    luaL_checkstack(L, 8, NULL);
    lua_pushnil(L);
    while (lua_next(L, raw)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            make_readonly(L);
            lua_rawset(L, raw);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 5);
    lua_pushvalue(L, raw);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, readonly_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, raw);
    lua_pushcclosure(L, readonly_len, 1);
    lua_setfield(L, -2, "__len");
    lua_pushvalue(L, raw);
    lua_pushcclosure(L, readonly_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "read-only");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_replace(L, raw);
}

/* ---- the cache module and the sandboxed base library --------------------------------------- */

static int cache_now(lua_State *L)
{
    lua_pushnumber(L, policy_engine_now(policy_vm_of(L)->pe));
    return 1;
}

static int cache_log(lua_State *L)
{
    enum log_level level;

    if (log_level_parse(luaL_checkstring(L, 1), &level) != 0)
        return luaL_argerror(L, 1, "expected \"error\", \"warn\", \"info\" or \"debug\"");
    policy_engine_script_log(policy_vm_of(L)->pe, level, luaL_tolstring(L, 2, NULL));
    return 0;
}

/* print(...) writes one diagnostic line at info, as cache.log does. */
static int policy_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    policy_engine_script_log(policy_vm_of(L)->pe, LOG_INFO, lua_tostring(L, -1));
    return 0;
}

/* load(chunk [, chunkname [, mode [, env]]]) with mode forced to "t": no binary chunks. */
static int policy_load(lua_State *L)
{
    int n = lua_gettop(L), nargs = 3;

    lua_settop(L, 4);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushliteral(L, "t");
    if (n >= 4) {
        lua_pushvalue(L, 4);
        nargs = 4;
    }
    lua_call(L, nargs, LUA_MULTRET);
    return lua_gettop(L) - 4;
}

static void push_string_field(lua_State *L, const char *key, const char *value)
{
    if (value == NULL) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

/* Pushes the table that becomes cache.config (made read-only with the cache table). */
static void push_config(lua_State *L, const struct policy_settings *s)
{
    lua_createtable(L, 0, 6);
    if (s->has_blobttl) {
        if (s->blobttl_ns % 1000000000u == 0)
            lua_pushinteger(L, (lua_Integer)(s->blobttl_ns / 1000000000u));
        else
            lua_pushnumber(L, (double)s->blobttl_ns / 1e9);
        lua_setfield(L, -2, "blobttl");
    }

    lua_createtable(L, (int)s->n_upstreams, 0);
    for (size_t i = 0; i < s->n_upstreams; i++) {
        const struct policy_upstream *u = &s->upstreams[i];
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, (lua_Integer)i + 1);
        lua_setfield(L, -2, "index");
        push_string_field(L, "originhost", u->originhost);
        lua_createtable(L, (int)u->n_upstreamhosts, 0);
        for (size_t j = 0; j < u->n_upstreamhosts; j++) {
            lua_pushstring(L, u->upstreamhosts[j]);
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, "upstreamhosts");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "upstreams");

    lua_createtable(L, 0, 3);
    push_string_field(L, "level", s->log_level ? s->log_level : "info");
    push_string_field(L, "formatter", s->log_formatter ? s->log_formatter : "text");
    lua_createtable(L, (int)s->n_log_fields, 0);
    for (size_t i = 0; i < s->n_log_fields; i++) {
        lua_createtable(L, 0, 2);
        push_string_field(L, "key", s->log_fields[i].key);
        push_string_field(L, "value", s->log_fields[i].value ? s->log_fields[i].value : "");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "fields");
    lua_setfield(L, -2, "log");

    push_string_field(L, "storage_root", s->storage_root);
    push_string_field(L, "policydir", s->policydir);
}

void policy_vm_push_upstream(lua_State *L, size_t index)
{
    lua_getfield(L, LUA_REGISTRYINDEX, UPSTREAMS_KEY);
    lua_geti(L, -1, (lua_Integer)index + 1);
    lua_remove(L, -2);
}

/* ---- loading files ------------------------------------------------------------------------- */

/*
 * Pushes the text chunk in `path` as a function. A missing file returns -ENOENT (nothing
 * pushed) when missing_ok; every other failure raises an error that names the file.
 */
static int load_file(lua_State *L, const char *path, bool missing_ok)
{
    char chunkname[PATH_MAX + 2];
    struct stat st;
    size_t size, got = 0;
    char *buf;
    int fd, status;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (missing_ok && (e == ENOENT || e == ENOTDIR)) return -ENOENT;
        return luaL_error(L, "%s: %s", path, strerror(e));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > POLICY_FILE_MAX) {
        close(fd);
        return luaL_error(L, "%s: not a regular file of at most %d MiB", path,
                          (int)(POLICY_FILE_MAX >> 20));
    }
    size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        close(fd);
        return policy_vm_out_of_memory(L);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got > 0 && buf[0] == LUA_SIGNATURE[0]) {
        free(buf);
        return luaL_error(L, "%s: a binary chunk (only Lua source is loaded)", path);
    }
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    status = luaL_loadbufferx(L, buf, got, chunkname, "t");
    free(buf);
    if (status != LUA_OK) return lua_error(L);
    return 0;
}

/* True for words of [A-Za-z0-9_-] joined by single dots. */
static bool module_name_ok(const char *name)
{
    bool word = false;

    for (const char *p = name; *p; p++) {
        char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '_' || c == '-') {
            word = true;
        } else if (c == '.' && word) {
            word = false;
        } else {
            return false;
        }
    }
    return word;
}

/* Writes dir/relative into path. Raises when it does not fit. */
static void join_path(lua_State *L, char *path, size_t len, const char *dir, const char *relative)
{
    int n = snprintf(path, len, "%s/%s", dir, relative);
    if (n < 0 || (size_t)n >= len) luaL_error(L, "%s/%s: path too long", dir, relative);
}

/* require(name): a module from the builtin directory, else from the drop-in directory. */
static int policy_require(lua_State *L)
{
    struct policy_vm *vm = policy_vm_of(L);
    const char *name = luaL_checkstring(L, 1);
    const char *dirs[2] = {vm->builtin_dir, vm->settings->policydir};
    char relative[PATH_MAX], path[PATH_MAX];
    bool found = false;

    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LOADED_KEY); /* 2 */
    lua_getfield(L, 2, name);                       /* 3 */
    if (lua_touserdata(L, 3) == &module_loading)
        return luaL_error(L, "module '%s' requires itself (a require loop)", name);
    if (lua_toboolean(L, 3)) return 1;
    lua_pop(L, 1);

    if (!module_name_ok(name) || strlen(name) + 5 > sizeof relative)
        return luaL_error(L,
                          "module '%s' not found: a module name is words of [A-Za-z0-9_-] "
                          "joined by '.'",
                          name);
    snprintf(relative, sizeof relative, "%s.lua", name);
    for (char *p = relative; *p && strcmp(p, ".lua") != 0; p++)
        if (*p == '.') *p = '/';
    for (size_t i = 0; i < 2 && !found; i++) {
        if (dirs[i] == NULL) continue;
        join_path(L, path, sizeof path, dirs[i], relative);
        found = load_file(L, path, true) == 0;
    }
    if (!found) return luaL_error(L, "module '%s' not found in the policy directories", name);

    lua_pushlightuserdata(L, &module_loading);
    lua_setfield(L, 2, name);
    lua_pushvalue(L, 1);
    lua_pushstring(L, path);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        lua_pushnil(L);
        lua_setfield(L, 2, name);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    return 1;
}

/* ---- building a state ---------------------------------------------------------------------- */

struct build {
    struct policy_vm *vm;
    char **files; /* the drop-in files, full paths, in order */
    size_t n_files;
    unsigned long instructions;
};

static void open_sandbox(lua_State *L, struct policy_vm *vm)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8}};
    static const char *const removed[] = {"dofile", "loadfile"};

    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }
    for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    lua_getglobal(L, "load");
    lua_pushcclosure(L, policy_load, 1);
    lua_setglobal(L, "load");
    lua_pushcfunction(L, policy_print);
    lua_setglobal(L, "print");
    lua_pushcfunction(L, policy_require);
    lua_setglobal(L, "require");

    /* The module cache, with the cache module in it; the upstreams for select_upstream. */
    lua_newtable(L);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, cache_now);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, cache_log);
    lua_setfield(L, -2, "log");
    push_config(L, vm->settings);
    lua_setfield(L, -2, "config");
    make_readonly(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "cache");
    lua_getfield(L, -1, "config");
    lua_getfield(L, -1, "upstreams");
    lua_setfield(L, LUA_REGISTRYINDEX, UPSTREAMS_KEY);
    lua_pop(L, 1);
    lua_setfield(L, -2, "cache");
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
}

static bool is_hook_name(const char *name)
{
    for (int h = 0; h < POLICY_HOOK_COUNT; h++)
        if (strcmp(name, policy_hook_name((enum policy_hook)h)) == 0) return true;
    return false;
}

/* The last line of a chunk that holds code: where its final `return` is. */
static int last_code_line(lua_State *L, int chunk)
{
    lua_Debug ar;
    lua_Integer last = 0;

    lua_pushvalue(L, chunk);
    lua_getinfo(L, ">L", &ar);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > last) last = lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    return (int)last;
}

/*
 * Runs the policy file `path` and merges the hooks of the table it returns into the
 * table at index `hooks`. When `module` is given, the table is also what
 * require(module) returns.
 */
static void load_policy(lua_State *L, struct build *b, int hooks, const char *path,
                        const char *module)
{
    int chunk, result;

    budget_start(b->vm, b->instructions);
    load_file(L, path, false);
    chunk = lua_gettop(L);
    lua_pushvalue(L, chunk);
    lua_call(L, 0, 1);
    result = lua_gettop(L);
    if (!lua_istable(L, result))
        luaL_error(L, "%s:%d: a policy file must return a table of hooks, not %s", path,
                   last_code_line(L, chunk), luaL_typename(L, result));

    for (int h = 0; h < POLICY_HOOK_COUNT; h++) {
        const char *name = policy_hook_name((enum policy_hook)h);
        lua_getfield(L, result, name);
        if (lua_isfunction(L, -1)) {
            lua_setfield(L, hooks, name);
        } else if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
        } else {
            luaL_error(L, "%s:%d: hook '%s' is a %s, expected a function", path,
                       last_code_line(L, chunk), name, luaL_typename(L, -1));
        }
    }
    lua_pushnil(L);
    while (lua_next(L, result)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING && !is_hook_name(lua_tostring(L, -1)))
            log_msg(LOG_WARN, "policy %s: '%s' is not a hook (ignored)", path, lua_tostring(L, -1));
    }
    if (module) {
        lua_getfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
        lua_pushvalue(L, result);
        lua_setfield(L, -2, module);
    }
    lua_settop(L, chunk - 1);
}

static int build_state(lua_State *L)
{
    struct build *b = lua_touserdata(L, 1);
    struct policy_vm *vm = b->vm;
    char path[PATH_MAX];
    int hooks;

    open_sandbox(L, vm);
    lua_newtable(L);
    hooks = lua_gettop(L);
    join_path(L, path, sizeof path, vm->builtin_dir, "default.lua");
    load_policy(L, b, hooks, path, "default");
    /* The built-in hooks, to tell later whether a drop-in replaced them. */
    lua_newtable(L);
    int builtin = lua_gettop(L);
    for (int h = 0; h < POLICY_HOOK_COUNT; h++) {
        lua_getfield(L, hooks, policy_hook_name((enum policy_hook)h));
        lua_setfield(L, builtin, policy_hook_name((enum policy_hook)h));
    }
    for (size_t i = 0; i < b->n_files; i++)
        load_policy(L, b, hooks, b->files[i], NULL);

    for (int h = 0; h < POLICY_HOOK_COUNT; h++) {
        lua_getfield(L, hooks, policy_hook_name((enum policy_hook)h));
        lua_getfield(L, builtin, policy_hook_name((enum policy_hook)h));
        vm->hook_builtin[h] = lua_isfunction(L, -2) && lua_rawequal(L, -1, -2);
        lua_pop(L, 1);
        if (lua_isfunction(L, -1))
            vm->hook_ref[h] = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    return 0;
}

static int compare_paths(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_files(char **files, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
}

/*
 * Lists dir's policy files: regular files (symbolic links followed) named "*.lua" and
 * not starting with '.', as full paths in byte-wise order of their names.
 */
static int list_dropins(const char *dir, char ***out, size_t *n_out, char *err, size_t errlen)
{
    char **files = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d;

    *out = NULL;
    *n_out = 0;
    if ((d = opendir(dir)) == NULL) {
        int e = errno;
        snprintf(err, errlen, "policydir %s: %s", dir, strerror(e));
        return e == ENOMEM ? -ENOMEM : -ENOENT;
    }
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char path[PATH_MAX];
        struct stat st;
        int w;

        if (de->d_name[0] == '.' || len <= 4 || strcmp(de->d_name + len - 4, ".lua") != 0) continue;
        w = snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (w < 0 || (size_t)w >= sizeof path || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char **grown = realloc(files, ncap * sizeof *files);
            if (grown == NULL) goto nomem;
            files = grown;
            cap = ncap;
        }
        if ((files[n] = strdup(path)) == NULL) goto nomem;
        n++;
    }
    closedir(d);
    if (n > 1) qsort(files, n, sizeof *files, compare_paths);
    *out = files;
    *n_out = n;
    return 0;

nomem:
    closedir(d);
    free_files(files, n);
    snprintf(err, errlen, "policydir %s: out of memory", dir);
    return -ENOMEM;
}

static int vm_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    log_msg(LOG_ERROR, "policy: Lua panic: %s", msg ? msg : "(no message)");
    abort();
}

int policy_vm_new(struct policy_engine *pe, const struct policy_settings *settings,
                  const char *builtin_dir, unsigned long instructions, size_t memory_bytes,
                  struct policy_vm **out, char *err, size_t errlen)
{
    struct build b = {.instructions = instructions};
    struct policy_vm *vm;
    int rc;

    *out = NULL;
    if (errlen) err[0] = '\0';
    if (settings->policydir) {
        rc = list_dropins(settings->policydir, &b.files, &b.n_files, err, errlen);
        if (rc != 0) return rc;
    }
    vm = calloc(1, sizeof *vm);
    if (vm == NULL) {
        free_files(b.files, b.n_files);
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    vm->pe = pe;
    vm->settings = settings;
    vm->builtin_dir = builtin_dir;
    vm->mem_limit = memory_bytes;
    for (int h = 0; h < POLICY_HOOK_COUNT; h++)
        vm->hook_ref[h] = LUA_NOREF;
    vm->L = lua_newstate(vm_alloc, vm);
    if (vm->L == NULL) {
        free(vm);
        free_files(b.files, b.n_files);
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    lua_atpanic(vm->L, vm_panic);
    b.vm = vm;
    rc = policy_vm_call(vm, build_state, &b, instructions, err, errlen);
    free_files(b.files, b.n_files);
    if (rc != 0) {
        char *newline = strchr(err, '\n');
        if (newline) *newline = '\0'; /* the message names file and line; no traceback */
        policy_vm_free(vm);
        return rc == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    *out = vm;
    return 0;
}

void policy_vm_free(struct policy_vm *vm)
{
    if (vm == NULL) return;
    if (vm->L) {
        budget_start(vm, vm->instr_limit);
        lua_close(vm->L);
    }
    free(vm);
}
