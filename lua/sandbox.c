/*
 * sandbox.c: the libraries a policy sees (see sandbox.h): what is taken away, what is
 * replaced, and the metered wrappers around the library functions that loop in C.
 */
#include "lua/sandbox.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdbool.h>
#include <string.h>

#include "lua/pattern.h"

/* The host and the pattern meter, in a userdata of the state (so they live as long). */
struct sandbox {
    struct sandbox_host host;
    struct pattern_meter meter;
};

/* Marks the metatables of read-only views (a key no policy can name). */
static const char readonly_marker = 0;

/* More results than this never fit on a Lua stack (LUAI_MAXSTACK). */
#define STACK_LIMIT 1000000UL
/* collectgarbage("collect") visits every object: one step per this many bytes held. */
#define GC_BYTES_PER_STEP 64

/* ---- charging -------------------------------------------------------------------------------- */

/* The sandbox, from upvalue 2 of a metered function (upvalue 1 is the original). */
static struct sandbox *sandbox_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(2));
}

static void charge(lua_State *L, unsigned long steps)
{
    struct sandbox *sb = sandbox_of(L);
    sb->host.charge(L, sb->host.ud, steps);
}

/* last - first + 1 as steps; 0 for an empty range, saturated for a huge one. */
static unsigned long range_steps(lua_Integer first, lua_Integer last)
{
    lua_Unsigned n;

    if (last < first) return 0;
    n = (lua_Unsigned)last - (lua_Unsigned)first + 1u;
    return n == 0 || n > (lua_Unsigned)ULONG_MAX ? ULONG_MAX : (unsigned long)n;
}

/* The 1-based positions i..j of a string of length len, as string.byte reads them. */
static unsigned long string_range_steps(lua_Integer i, lua_Integer j, size_t len)
{
    lua_Integer n = (lua_Integer)len;

    if (i < 0) i = i < -n ? 1 : n + i + 1;
    if (i == 0) i = 1;
    if (j < 0) j = j < -n ? 0 : n + j + 1;
    if (j > n) j = n;
    return range_steps(i, j);
}

/* Calls upvalue 1 (the library's own function) with the arguments as given. */
static int call_original(lua_State *L)
{
    int n = lua_gettop(L);

    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* The length of the table at index 1 (its __len if it has one), or -1 when it is not a
 * table: the library function then raises its own error, after no work. */
static lua_Integer table_len(lua_State *L)
{
    return lua_type(L, 1) == LUA_TTABLE ? luaL_len(L, 1) : -1;
}

/* ---- the metered functions ------------------------------------------------------------------- */

/*
 * string.rep(s, n [, sep]): one step per copy (an empty s is copied n times too). A
 * result larger than the memory cap is refused when its buffer is allocated, before any
 * copy: that costs nothing, and fails as "not enough memory".
 */
static int metered_rep(lua_State *L)
{
    size_t len, sep_len;
    lua_Integer n;

    luaL_checklstring(L, 1, &len);
    n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &sep_len);
    if (n > 0) {
        struct sandbox *sb = sandbox_of(L);
        size_t unit = len + sep_len, limit = sb->host.memory_limit(sb->host.ud);
        bool fits = unit == 0 || (lua_Unsigned)n <= limit / unit;
        charge(L, fits ? range_steps(1, n) : 1);
    }
    return call_original(L);
}

/* string.byte(s [, i [, j]]) and utf8.codepoint(s [, i [, j]]): a step per byte. */
static int metered_bytes(lua_State *L)
{
    size_t len;
    lua_Integer i, j;

    luaL_checklstring(L, 1, &len);
    i = luaL_optinteger(L, 2, 1);
    j = luaL_optinteger(L, 3, i);
    charge(L, string_range_steps(i, j, len));
    return call_original(L);
}

/* utf8.len(s [, i [, j]]): a step per byte from i to j (default: to the end). */
static int metered_utf8_len(lua_State *L)
{
    size_t len;
    lua_Integer i, j;

    luaL_checklstring(L, 1, &len);
    i = luaL_optinteger(L, 2, 1);
    j = luaL_optinteger(L, 3, -1);
    charge(L, string_range_steps(i, j, len));
    return call_original(L);
}

/* table.move(a1, f, e, t [, a2]): a step per element moved. */
static int metered_move(lua_State *L)
{
    lua_Integer first = luaL_checkinteger(L, 2), last = luaL_checkinteger(L, 3);

    charge(L, range_steps(first, last));
    return call_original(L);
}

/* table.insert(t, pos, v): a step per element moved up (appending moves none). */
static int metered_insert(lua_State *L)
{
    if (lua_gettop(L) == 3) {
        lua_Integer len = table_len(L), pos = luaL_checkinteger(L, 2);
        charge(L, 1 + range_steps(pos, len));
    }
    return call_original(L);
}

/* table.remove(t [, pos]): a step per element moved down. */
static int metered_remove(lua_State *L)
{
    lua_Integer len = table_len(L);

    if (len >= 0) charge(L, 1 + range_steps(luaL_optinteger(L, 2, len), len));
    return call_original(L);
}

/* table.sort(t [, comp]): n * ceil(log2 n) comparisons at most, on average. */
static int metered_sort(lua_State *L)
{
    lua_Integer len = table_len(L);

    if (len > 1) {
        unsigned long n = range_steps(1, len), depth = 0, steps;
        for (unsigned long rest = n - 1; rest > 0; rest >>= 1)
            depth++;
        steps = n > ULONG_MAX / depth ? ULONG_MAX : n * depth;
        charge(L, steps);
    }
    return call_original(L);
}

/* table.concat(t [, sep [, i [, j]]]): a step per element. */
static int metered_concat(lua_State *L)
{
    lua_Integer len = table_len(L);

    if (len >= 0) charge(L, range_steps(luaL_optinteger(L, 3, 1), luaL_optinteger(L, 4, len)));
    return call_original(L);
}

/* table.unpack(t [, i [, j]]): a step per element (more never fit on the stack). */
static int metered_unpack(lua_State *L)
{
    lua_Integer first = luaL_optinteger(L, 2, 1);
    lua_Integer last = lua_isnoneornil(L, 3) ? luaL_len(L, 1) : luaL_checkinteger(L, 3);
    unsigned long steps = range_steps(first, last);

    charge(L, steps > STACK_LIMIT ? STACK_LIMIT : steps);
    return call_original(L);
}

/* collectgarbage([opt [, arg]]): a full cycle or a step costs the size of the heap. */
static int metered_collectgarbage(lua_State *L)
{
    static const char *const options[] = {"stop",         "restart",     "collect",    "count",
                                          "step",         "setpause",    "setstepmul", "isrunning",
                                          "generational", "incremental", NULL};
    const char *option = options[luaL_checkoption(L, 1, "collect", options)];

    if (strcmp(option, "collect") == 0 || strcmp(option, "step") == 0) {
        unsigned long kib = (unsigned long)lua_gc(L, LUA_GCCOUNT);
        charge(L, 1 + kib * (1024 / GC_BYTES_PER_STEP));
    }
    return call_original(L);
}

/* load's reader, metered: upvalues the policy's reader and the sandbox. */
static int metered_reader(lua_State *L)
{
    size_t len = 0;

    lua_settop(L, 0);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_call(L, 0, 1);
    if (lua_type(L, 1) == LUA_TSTRING) lua_tolstring(L, 1, &len);
    charge(L, 1 + len);
    return 1;
}

/* load(chunk [, chunkname [, mode [, env]]]): mode is always "t" (no binary chunks);
 * a step per byte of source. */
static int metered_load(lua_State *L)
{
    int n = lua_gettop(L);
    size_t len = 0;

    if (lua_type(L, 1) == LUA_TSTRING) {
        lua_tolstring(L, 1, &len);
        charge(L, 1 + len);
    } else if (lua_type(L, 1) == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushcclosure(L, metered_reader, 2);
        lua_replace(L, 1);
    }
    if (n < 3) lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    return call_original(L);
}

/* ---- base functions of our own --------------------------------------------------------------- */

static int sandbox_print(lua_State *L)
{
    struct sandbox *sb = lua_touserdata(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    sb->host.print(sb->host.ud, lua_tostring(L, -1));
    return 0;
}

/* setmetatable(t, mt) as Lua's, except that mt may not have a __gc field (sandbox.h). */
static int sandbox_setmetatable(lua_State *L)
{
    int type = lua_type(L, 2);

    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, type == LUA_TNIL || type == LUA_TTABLE, 2, "nil or table");
    if (type == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_argerror(L, 2,
                                 "a metatable with __gc is not allowed in a policy: "
                                 "finalizers run outside the instruction budget");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static bool is_readonly(lua_State *L, int index)
{
    bool marked;

    if (!lua_getmetatable(L, index)) return false;
    marked = lua_rawgetp(L, -1, &readonly_marker) != LUA_TNIL;
    lua_pop(L, 2);
    return marked;
}

/* rawset(t, k, v) as Lua's, except on a read-only view. */
static int sandbox_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    if (is_readonly(L, 1)) return luaL_argerror(L, 1, "a read-only table");
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

/* ---- read-only views ------------------------------------------------------------------------- */

static int readonly_newindex(lua_State *L)
{
    return luaL_error(L, "attempt to modify a read-only table (key '%s')",
                      luaL_tolstring(L, 2, NULL));
}

/* Upvalue 1 of the closures below is the table behind the view. */
static int readonly_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

static int readonly_next(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_next(L, lua_upvalueindex(1))) return 2;
    lua_pushnil(L);
    return 1;
}

/* __pairs: the iterator reads the table behind the view; the state handed out is the view. */
static int readonly_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, readonly_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

void sandbox_make_readonly(lua_State *L)
{
    int raw = lua_gettop(L);

    luaL_checkstack(L, 8, NULL);
    lua_pushnil(L);
    while (lua_next(L, raw)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            sandbox_make_readonly(L);
            lua_rawset(L, raw);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 6);
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
    lua_pushboolean(L, 1);
    lua_rawsetp(L, -2, &readonly_marker);
    lua_setmetatable(L, -2);
    lua_replace(L, raw);
}

/* ---- opening --------------------------------------------------------------------------------- */

/* Replaces global `name` (a library table) by a copy of it, and leaves the copy on the
 * stack. */
static int copy_library(lua_State *L, const char *name)
{
    int copy;

    lua_getglobal(L, name);
    lua_newtable(L);
    copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, copy - 1)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, copy);
    }
    lua_remove(L, copy - 1);
    lua_pushvalue(L, -1);
    lua_setglobal(L, name);
    return lua_gettop(L);
}

/* table[name] = a metered closure around the function that is there. */
static void meter(lua_State *L, int table, struct sandbox *sb, const char *name, lua_CFunction fn)
{
    lua_getfield(L, table, name);
    lua_pushlightuserdata(L, sb);
    lua_pushcclosure(L, fn, 2);
    lua_setfield(L, table, name);
}

static void set_closure(lua_State *L, int table, struct sandbox *sb, const char *name,
                        lua_CFunction fn)
{
    lua_pushlightuserdata(L, sb);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, table, name);
}

void sandbox_open(lua_State *L, const struct sandbox_host *host)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8}};
    struct sandbox *sb;
    int globals, lib;

    sb = lua_newuserdatauv(L, sizeof *sb, 0);
    sb->host = *host;
    sb->meter.charge = host->charge;
    sb->meter.ud = host->ud;
    lua_rawsetp(L, LUA_REGISTRYINDEX, sb);

    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }

    lua_pushglobaltable(L);
    globals = lua_gettop(L);
    lua_pushnil(L);
    lua_setfield(L, globals, "dofile");
    lua_pushnil(L);
    lua_setfield(L, globals, "loadfile");
    set_closure(L, globals, sb, "print", sandbox_print);
    lua_pushcfunction(L, sandbox_setmetatable);
    lua_setfield(L, globals, "setmetatable");
    lua_pushcfunction(L, sandbox_rawset);
    lua_setfield(L, globals, "rawset");
    meter(L, globals, sb, "load", metered_load);
    meter(L, globals, sb, "collectgarbage", metered_collectgarbage);

    lib = copy_library(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, lib, "dump");
    pattern_register(L, lib, &sb->meter);
    meter(L, lib, sb, "rep", metered_rep);
    meter(L, lib, sb, "byte", metered_bytes);
    /* Methods of strings come from the copy too. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, lib);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 3);

    lib = copy_library(L, LUA_TABLIBNAME);
    meter(L, lib, sb, "move", metered_move);
    meter(L, lib, sb, "insert", metered_insert);
    meter(L, lib, sb, "remove", metered_remove);
    meter(L, lib, sb, "sort", metered_sort);
    meter(L, lib, sb, "concat", metered_concat);
    meter(L, lib, sb, "unpack", metered_unpack);
    lua_pop(L, 1);

    lib = copy_library(L, LUA_UTF8LIBNAME);
    meter(L, lib, sb, "codepoint", metered_bytes);
    meter(L, lib, sb, "len", metered_utf8_len);
    lua_pop(L, 2);
}
