/*
 * policy_vm.c: one sandboxed Lua state and the policies loaded into it.
 *
 * The state's allocator counts its bytes, refuses to grow past the cap and charges what
 * it hands out to the running call; a count hook charges instructions and watches the
 * deadline; once a call is past its budget the hook runs at every instruction and makes
 * each one fail, so that a policy cannot pcall its way past the budget. All work on the
 * state, building it included, runs under lua_pcall: a refused allocation is a Lua
 * error, never a panic.
 */
#include "lua/policy_vm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "lua/sandbox.h"

/* Instructions between two runs of the count hook. */
#define HOOK_PERIOD 1000UL
/* A policy file or module larger than this is refused. */
#define POLICY_FILE_MAX ((size_t)4 << 20)

#define LOADED_KEY "content-cache.policy.loaded"
#define CONFIG_KEY "content-cache.policy.config"

struct policy_vm {
    lua_State *L;
    struct policy_vm_options opt;

    size_t mem_used, mem_limit;
    bool mem_refused; /* an allocation was refused (or malloc failed) in this call */

    bool in_call;              /* a call is running: its work is charged */
    unsigned long steps_used;  /* of the running call */
    unsigned long steps_limit; /* its budget */
    unsigned long hook_period; /* instructions between two runs of the count hook */
    size_t alloc_remainder;    /* bytes allocated and not yet charged as a step */
    uint64_t deadline_ns;      /* on the monotonic clock */
    unsigned deadline_ms;      /* for the message */
    bool budget_exceeded;      /* every further instruction of the call fails */
    bool past_deadline;        /* because of the deadline */
    bool bad_return;           /* the error being raised is a wrong return value */

    int hook_ref[POLICY_VM_MAX_HOOKS];      /* LUA_NOREF when no policy defines the hook */
    bool hook_builtin[POLICY_VM_MAX_HOOKS]; /* the hook in force is default.lua's */
    bool builtin_loaded;                    /* a file of the builtin directory was loaded */
    bool builtin_edited;                    /* one of them is not byte for byte a shipped file */
};

/* Marks a module whose loading has started and not finished (a require loop). */
static char module_loading;

static struct policy_vm *vm_of(lua_State *L)
{
    void *ud = NULL;

    lua_getallocf(L, &ud);
    return ud;
}

/* ---- the budget ------------------------------------------------------------------------------ */

static uint64_t monotonic_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void add_steps(struct policy_vm *vm, unsigned long steps)
{
    vm->steps_used = steps > ULONG_MAX - vm->steps_used ? ULONG_MAX : vm->steps_used + steps;
}

static void count_hook(lua_State *L, lua_Debug *ar);

/* From now on the count hook runs at every instruction and fails it. */
static void budget_spent(struct policy_vm *vm)
{
    if (vm->budget_exceeded) return;
    vm->budget_exceeded = true;
    vm->hook_period = 1;
    if (vm->L) lua_sethook(vm->L, count_hook, LUA_MASKCOUNT, 1);
}

/* Raises the budget error, blaming the function `level` levels up the stack. */
static int budget_error(lua_State *L, struct policy_vm *vm, int level)
{
    budget_spent(vm);
    luaL_where(L, level);
    if (vm->past_deadline)
        lua_pushfstring(L, "instruction budget exceeded (the call ran past its deadline of %d ms)",
                        (int)vm->deadline_ms);
    else
        lua_pushliteral(L, "instruction budget exceeded");
    lua_concat(L, 2);
    return lua_error(L);
}

/* True when the call has spent its budget or passed its deadline. */
static bool budget_over(struct policy_vm *vm)
{
    if (vm->budget_exceeded || vm->steps_used >= vm->steps_limit) return true;
    if (monotonic_ns() < vm->deadline_ns) return false;
    vm->past_deadline = true;
    return true;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    struct policy_vm *vm = vm_of(L);

    (void)ar;
    add_steps(vm, vm->hook_period);
    if (budget_over(vm)) budget_error(L, vm, 0);
}

/* The sandbox's charge: work done inside a C function of the libraries. */
static void charge_steps(lua_State *L, void *ud, unsigned long steps)
{
    struct policy_vm *vm = ud;

    add_steps(vm, steps);
    if (budget_over(vm)) budget_error(L, vm, 1);
}

/*
 * What the allocator hands out during a call costs steps too. The allocator may not
 * raise an error; when the budget is spent it arms the hook, so that the next instruction
 * fails (lua_sethook may be called at any point, even from a signal handler).
 */
static void charge_allocation(struct policy_vm *vm, size_t bytes)
{
    if (!vm->in_call) return;
    vm->alloc_remainder += bytes;
    add_steps(vm, (unsigned long)(vm->alloc_remainder / POLICY_VM_ALLOC_BYTES_PER_STEP));
    vm->alloc_remainder %= POLICY_VM_ALLOC_BYTES_PER_STEP;
    if (vm->steps_used >= vm->steps_limit) budget_spent(vm);
}

/* Starts a fresh budget of `steps`, and its deadline, for the next piece of work. */
static void budget_start(struct policy_vm *vm, unsigned long steps)
{
    uint64_t deadline_ms;

    if (steps == 0) steps = 1;
    vm->steps_used = 0;
    vm->steps_limit = steps;
    vm->alloc_remainder = 0;
    vm->budget_exceeded = false;
    vm->past_deadline = false;
    deadline_ms = (uint64_t)steps / (1000000u / POLICY_VM_NS_PER_STEP);
    if (deadline_ms < POLICY_VM_MIN_DEADLINE_MS) deadline_ms = POLICY_VM_MIN_DEADLINE_MS;
    if (deadline_ms > UINT32_MAX) deadline_ms = UINT32_MAX;
    vm->deadline_ms = (unsigned)deadline_ms;
    vm->deadline_ns = monotonic_ns() + deadline_ms * 1000000u;
    vm->hook_period = steps < HOOK_PERIOD ? steps : HOOK_PERIOD;
    lua_sethook(vm->L, count_hook, LUA_MASKCOUNT, (int)vm->hook_period);
}

/* ---- memory ---------------------------------------------------------------------------------- */

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
    if (nsize > old) charge_allocation(vm, nsize - old);
    return p;
}

size_t policy_vm_memory(const struct policy_vm *vm)
{
    return vm->mem_used;
}

void policy_vm_set_memory_limit(struct policy_vm *vm, size_t bytes)
{
    vm->mem_limit = bytes;
}

static size_t memory_limit(void *ud)
{
    return ((struct policy_vm *)ud)->mem_limit;
}

/* ---- protected calls ------------------------------------------------------------------------- */

/* The message handler: the error's text and a traceback, except for wrong return values.
 * What it allocates is not charged: the call has ended. */
static int traceback_handler(lua_State *L)
{
    struct policy_vm *vm = vm_of(L);
    const char *msg = lua_tostring(L, 1);

    vm->in_call = false;
    if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    if (vm->bad_return) return 1;
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
    vm_of(L)->bad_return = true;
    lua_pushstring(L, text);
    return lua_error(L);
}

int policy_vm_out_of_memory(lua_State *L)
{
    vm_of(L)->mem_refused = true;
    lua_pushliteral(L, "not enough memory (C side)");
    return lua_error(L);
}

int policy_vm_call(struct policy_vm *vm, lua_CFunction fn, void *ud, unsigned long steps, char *msg,
                   size_t msglen)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L), status, rc = 0;

    vm->mem_refused = false;
    vm->bad_return = false;
    budget_start(vm, steps);
    lua_pushcfunction(L, traceback_handler);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    vm->in_call = true;
    status = lua_pcall(L, 1, 0, base + 1);
    vm->in_call = false;
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
    /* Give back what a call that hit the cap held (no policy code runs: no finalizers). */
    if (rc == -ENOMEM) lua_gc(L, LUA_GCCOLLECT, 0);
    return rc;
}

/* ---- the cache module ------------------------------------------------------------------------ */

static int cache_now(lua_State *L)
{
    struct policy_vm *vm = vm_of(L);

    lua_pushnumber(L, vm->opt.host.now(vm->opt.host.ud));
    return 1;
}

static int cache_turn(lua_State *L)
{
    struct policy_vm *vm = vm_of(L);
    unsigned long n = vm->opt.host.turn(vm->opt.host.ud, (long long)luaL_checkinteger(L, 1));

    if (n == 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int cache_log(lua_State *L)
{
    struct policy_vm *vm = vm_of(L);
    enum log_level level;

    if (log_level_parse(luaL_checkstring(L, 1), &level) != 0)
        return luaL_argerror(L, 1, "expected \"error\", \"warn\", \"info\" or \"debug\"");
    vm->opt.host.log(vm->opt.host.ud, level, luaL_tolstring(L, 2, NULL));
    return 0;
}

static void print_line(void *ud, const char *line)
{
    struct policy_vm *vm = ud;

    vm->opt.host.log(vm->opt.host.ud, LOG_INFO, line);
}

void policy_vm_push_config(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
}

void policy_vm_push_hook(lua_State *L, size_t h)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm_of(L)->hook_ref[h]);
}

bool policy_vm_has_hook(const struct policy_vm *vm, size_t h)
{
    return h < vm->opt.n_hooks && vm->hook_ref[h] != LUA_NOREF;
}

bool policy_vm_hook_is_builtin(const struct policy_vm *vm, size_t h)
{
    return policy_vm_has_hook(vm, h) && vm->hook_builtin[h];
}

bool policy_vm_builtin_pristine(const struct policy_vm *vm)
{
    return vm->builtin_loaded && !vm->builtin_edited;
}

/* Notes whether `path`, read as buf[0..len), is a builtin file as shipped. */
static void check_shipped(struct policy_vm *vm, const char *path, const char *buf, size_t len)
{
    size_t dir_len = strlen(vm->opt.builtin_dir);
    const char *name;
    unsigned char bin[DIGEST_SHA256_LEN];
    char hex[DIGEST_SHA256_HEX_LEN + 1];
    struct digest_sha256 ctx;
    bool shipped = false;

    if (strncmp(path, vm->opt.builtin_dir, dir_len) != 0 || path[dir_len] != '/') return;
    name = path + dir_len + 1;
    vm->builtin_loaded = true;
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, buf, len);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    for (size_t i = 0; i < vm->opt.n_shipped && !shipped; i++)
        shipped = strcmp(vm->opt.shipped[i].name, name) == 0 &&
                  strcmp(vm->opt.shipped[i].sha256, hex) == 0;
    if (!shipped) vm->builtin_edited = true;
}

/* ---- loading files --------------------------------------------------------------------------- */

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
    check_shipped(vm_of(L), path, buf, got);
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
    struct policy_vm *vm = vm_of(L);
    const char *name = luaL_checkstring(L, 1);
    const char *dirs[2] = {vm->opt.builtin_dir, vm->opt.dropin_dir};
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

/* ---- building a state ------------------------------------------------------------------------ */

struct build {
    struct policy_vm *vm;
    char **files; /* the drop-in files, full paths, in order */
    size_t n_files;
};

/* The global `cache`, also require "cache": now, log and config, read-only. */
static void open_cache_module(lua_State *L, struct policy_vm *vm)
{
    lua_newtable(L); /* the modules loaded by require */
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, cache_now);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, cache_log);
    lua_setfield(L, -2, "log");
    if (vm->opt.host.turn != NULL) {
        lua_pushcfunction(L, cache_turn);
        lua_setfield(L, -2, "turn");
    }
    vm->opt.push_config(L, vm->opt.config_ud);
    lua_setfield(L, -2, "config");
    sandbox_make_readonly(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "cache");
    lua_getfield(L, -1, "config");
    lua_setfield(L, LUA_REGISTRYINDEX, CONFIG_KEY);
    lua_setfield(L, -2, "cache");
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
}

static bool is_hook_name(const struct policy_vm *vm, const char *name)
{
    for (size_t h = 0; h < vm->opt.n_hooks; h++)
        if (strcmp(name, vm->opt.hook_names[h]) == 0) return true;
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
 * Runs the policy file `path`, with a budget of its own, and merges the hooks of the
 * table it returns into the table at index `hooks`. When `module` is given, the table is
 * also what require(module) returns.
 */
static void load_policy(lua_State *L, struct policy_vm *vm, int hooks, const char *path,
                        const char *module)
{
    int chunk, result;

    budget_start(vm, vm->opt.instructions);
    load_file(L, path, false);
    chunk = lua_gettop(L);
    lua_pushvalue(L, chunk);
    lua_call(L, 0, 1);
    result = lua_gettop(L);
    if (!lua_istable(L, result))
        luaL_error(L, "%s:%d: a policy file must return a table of hooks, not %s", path,
                   last_code_line(L, chunk), luaL_typename(L, result));

    for (size_t h = 0; h < vm->opt.n_hooks; h++) {
        const char *name = vm->opt.hook_names[h];
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
        if (lua_type(L, -1) == LUA_TSTRING && !is_hook_name(vm, lua_tostring(L, -1)))
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
    struct sandbox_host sandbox = {
        .charge = charge_steps, .print = print_line, .memory_limit = memory_limit, .ud = vm};
    char path[PATH_MAX];
    int hooks, builtin;

    sandbox_open(L, &sandbox);
    lua_pushcfunction(L, policy_require);
    lua_setglobal(L, "require");
    open_cache_module(L, vm);
    lua_newtable(L);
    hooks = lua_gettop(L);
    join_path(L, path, sizeof path, vm->opt.builtin_dir, "default.lua");
    load_policy(L, vm, hooks, path, "default");
    /* The built-in hooks, to tell later whether a drop-in replaced them. */
    lua_newtable(L);
    builtin = lua_gettop(L);
    for (size_t h = 0; h < vm->opt.n_hooks; h++) {
        lua_getfield(L, hooks, vm->opt.hook_names[h]);
        lua_setfield(L, builtin, vm->opt.hook_names[h]);
    }
    for (size_t i = 0; i < b->n_files; i++)
        load_policy(L, vm, hooks, b->files[i], NULL);

    for (size_t h = 0; h < vm->opt.n_hooks; h++) {
        lua_getfield(L, hooks, vm->opt.hook_names[h]);
        lua_getfield(L, builtin, vm->opt.hook_names[h]);
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

int policy_vm_new(const struct policy_vm_options *options, struct policy_vm **out, char *err,
                  size_t errlen)
{
    struct build b = {0};
    struct policy_vm *vm;
    int rc;

    *out = NULL;
    if (errlen) err[0] = '\0';
    if (options->n_hooks > POLICY_VM_MAX_HOOKS) {
        snprintf(err, errlen, "policy: more than %d hooks", POLICY_VM_MAX_HOOKS);
        return -EINVAL;
    }
    if (options->dropin_files) {
        b.files = calloc(options->n_dropin_files ? options->n_dropin_files : 1, sizeof *b.files);
        for (size_t i = 0; b.files && i < options->n_dropin_files; i++)
            if ((b.files[b.n_files++] = strdup(options->dropin_files[i])) == NULL) {
                free_files(b.files, b.n_files);
                b.files = NULL;
            }
        if (b.files == NULL) {
            snprintf(err, errlen, "policy: out of memory");
            return -ENOMEM;
        }
    } else if (options->dropin_dir) {
        rc = list_dropins(options->dropin_dir, &b.files, &b.n_files, err, errlen);
        if (rc != 0) return rc;
    }
    vm = calloc(1, sizeof *vm);
    if (vm == NULL) {
        free_files(b.files, b.n_files);
        snprintf(err, errlen, "policy: out of memory");
        return -ENOMEM;
    }
    vm->opt = *options;
    vm->mem_limit = options->memory_bytes;
    for (size_t h = 0; h < POLICY_VM_MAX_HOOKS; h++)
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
    rc = policy_vm_call(vm, build_state, &b, options->instructions, err, errlen);
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
    if (vm->L) lua_close(vm->L);
    free(vm);
}
