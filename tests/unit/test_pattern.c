/*
 * test_pattern.c: the metered pattern functions (lua/pattern.c) give what Lua 5.4's own
 * string.find, match, gmatch and gsub give, errors included, for a corpus of cases that
 * covers every item of the pattern language and for random patterns; and their work is
 * charged, so that a pattern that backtracks without end is stopped by the meter.
 *
 * Both run in one plain state (luaL_openlibs): `string` has Lua's functions, `bounded`
 * the metered ones. A case is run through both under pcall and the results are compared
 * as text; an error message compares without the function's name (Lua finds "find" for
 * its own function and "?" for ours when pcall calls them directly).
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <time.h>

#include "check.h"
#include "lua/pattern.h"

struct test_meter {
    unsigned long used, limit;
    unsigned long charges;
};

static void test_charge(lua_State *L, void *ud, unsigned long steps)
{
    struct test_meter *m = ud;

    m->charges++;
    m->used += steps;
    if (m->used > m->limit) luaL_error(L, "out of steps");
}

static struct test_meter meter_state;
static const struct pattern_meter meter = {test_charge, &meter_state};

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();

    luaL_openlibs(L);
    lua_newtable(L);
    pattern_register(L, -1, &meter);
    lua_setglobal(L, "bounded");
    meter_state = (struct test_meter){.limit = ~0UL};
    return L;
}

/* Runs Lua source that must not fail; returns the string it returns (static buffer). */
static const char *run(lua_State *L, const char *source)
{
    static char result[8192];

    if (luaL_dostring(L, source) != LUA_OK) {
        snprintf(result, sizeof result, "ERROR: %s", lua_tostring(L, -1));
    } else {
        snprintf(result, sizeof result, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
    }
    lua_settop(L, 0);
    return result;
}

/* The comparison, in Lua: show(fn, ...) is what fn gives, as text. */
static const char *const compare_lib =
    "local function show_values(n, ...)\n"
    "  local out = {}\n"
    "  for i = 1, n do\n"
    "    local v = select(i, ...)\n"
    "    out[#out + 1] = type(v) .. ':' .. tostring(v)\n"
    "  end\n"
    "  return table.concat(out, ',')\n"
    "end\n"
    "local function show(ok, ...)\n"
    "  if not ok then\n"
    "    local msg = tostring(...)\n"
    "    return 'error:' .. msg:gsub(\"to '[^']*'\", \"to '?'\")\n"
    "  end\n"
    "  return show_values(select('#', ...), ...)\n"
    "end\n"
    "local function gmatch_all(lib, s, p, init)\n"
    "  local out = {}\n"
    "  local ok, err = pcall(function()\n"
    "    local n = 0\n"
    "    for a, b, c in lib.gmatch(s, p, init) do\n"
    "      out[#out + 1] = show(true, a, b, c)\n"
    "      n = n + 1\n"
    "      if n > 200 then break end\n"
    "    end\n"
    "  end)\n"
    "  if not ok then out[#out + 1] = show(false, err) end\n"
    "  return table.concat(out, ';')\n"
    "end\n"
    "function differences(cases)\n"
    "  local bad = {}\n"
    "  for _, c in ipairs(cases) do\n"
    "    local fn, args = c[1], table.pack(table.unpack(c, 2))\n"
    "    local want, got\n"
    "    if fn == 'gmatch' then\n"
    "      want = gmatch_all(string, args[1], args[2], args[3])\n"
    "      got = gmatch_all(bounded, args[1], args[2], args[3])\n"
    "    else\n"
    "      want = show(pcall(string[fn], table.unpack(args, 1, args.n)))\n"
    "      got = show(pcall(bounded[fn], table.unpack(args, 1, args.n)))\n"
    "    end\n"
    "    if want ~= got then\n"
    "      bad[#bad + 1] = string.format('%s(%q, %q): lua %s, ours %s', fn,\n"
    "        tostring(args[1]), tostring(args[2]), want, got)\n"
    "    end\n"
    "  end\n"
    "  return table.concat(bad, '\\n')\n"
    "end\n";

static void test_corpus_matches_lua(void)
{
    lua_State *L = new_state();
    const char *diff;

    CHECK_STR(run(L, compare_lib), "");
    diff = run(
        L,
        "local T = {\n"
        "  up = function(s) return s:upper() end,\n"
        "  keep = function() return nil end,\n"
        "  no = function() return false end,\n"
        "  num = function() return 7 end,\n"
        "  bad = function() return {} end,\n"
        "}\n"
        "local map = { hello = 'HI', world = false }\n"
        "local cases = {\n"
        /* plain and special finds, init, plain flag */
        "  {'find', 'hello world', 'o w'}, {'find', 'hello world', 'o', 6},\n"
        "  {'find', 'hello world', 'l', -3}, {'find', 'hello', 'l', -100},\n"
        "  {'find', 'hello', '', 10}, {'find', 'hello', '', 6}, {'find', '', ''},\n"
        "  {'find', 'a.b', '.', 1, true}, {'find', 'a.b', '%.'}, {'find', 'a+b', '+', 1, true},\n"
        "  {'find', 'a\\0b', '\\0'}, {'find', 'a\\0b', '%z'}, {'find', 'x^y', '^y'},\n"
        "  {'find', 'abc', 'b', 0}, {'find', 'abc', 'c', math.maxinteger},\n"
        "  {'find', 'abc', 'c', math.mininteger}, {'find', 12345, 34}, {'find', 'abc'},\n"
        /* classes */
        "  {'match', 'key = value; 42!', '%a+'}, {'match', ' \\t x', '%s*()'},\n"
        "  {'match', 'abc123', '%d+'}, {'match', 'ABCdef', '%l+'}, {'match', 'ABCdef', '%u+'},\n"
        "  {'match', 'a,b;c', '%p'}, {'match', '\\1\\2x', '%c+'}, {'match', 'zz-ff', '%x+'},\n"
        "  {'match', 'a b', '%g+'}, {'match', 'a_1', '%w+'}, {'match', 'abc', '%A'},\n"
        "  {'match', 'ab12', '%D+'}, {'match', '  x', '%S'}, {'match', 'x', '%W'},\n"
        /* sets */
        "  {'match', 'hello-world', '[%w-]+'}, {'match', 'a]b', '[]]'}, {'match', 'a]b', "
        "'[^]]+'},\n"
        "  {'match', 'x-y', '[a-]+'}, {'match', 'q', '[a-z]'}, {'match', 'Q', '[^a-z]'},\n"
        "  {'match', '%a', '[%%]'}, {'match', 'a^b', '[b^]+'}, {'match', '-', '[-]'},\n"
        "  {'match', 'b', '[a-c-e]'}, {'match', 'd', '[a-c-e]'}, {'match', '-', '[a-c-e]'},\n"
        "  {'match', 'x', '[%a-z]'}, {'match', '5', '[^%d]'},\n"
        /* quantifiers */
        "  {'match', 'aaab', 'a*b'}, {'match', 'aaab', 'a-b'}, {'match', 'aaab', 'a+'},\n"
        "  {'match', 'b', 'a?b'}, {'match', 'ab', 'a?b'}, {'match', 'aaa', 'a-'},\n"
        "  {'match', '<<a>>', '<(.-)>'}, {'match', '<<a>>', '<(.*)>'}, {'match', 'x', 'x+?'},\n"
        /* anchors */
        "  {'match', 'abc', '^b'}, {'match', 'abc', 'c$'}, {'match', 'a$c', 'a$c'},\n"
        "  {'match', 'abc', '^abc$'}, {'match', 'abc', '^'}, {'match', 'abc', '$'},\n"
        "  {'find', 'aXbX', 'X', 3}, {'match', 'abc', '^b', 2},\n"
        /* captures */
        "  {'match', 'key=val', '(%w+)=(%w+)'}, {'match', 'abc', '()b()'},\n"
        "  {'match', 'abc', '((a)(b))'}, {'find', 'xabcx', '(b)(c)'},\n"
        "  {'match', 'abab', '(ab)%1'}, {'match', 'abac', '(ab)%1'}, {'match', 'aa', '()%1'},\n"
        "  {'match', 'x', '%0'}, {'match', 'x', '(x)%2'}, {'match', 'x', '(x%1)'},\n"
        "  {'match', 'x', '(x'}, {'match', 'x', 'x)'}, {'match', 'x', '%'},\n"
        "  {'match', 'x', '[x'}, {'match', 'x', '[^'}, {'match', 'x', '[%'},\n"
        "  {'match', string.rep('a', 40), string.rep('(a)', 33)},\n"
        "  {'match', string.rep('a', 40), string.rep('(a)', 32)},\n"
        "  {'match', 'x', string.rep('a?', 300) .. 'x'},\n"
        /* %b and %f */
        "  {'match', 'f(a(b)c)d', '%b()'}, {'match', '((x)', '%b()'}, {'match', 'x', '%b'},\n"
        "  {'match', 'x', '%bx'}, {'match', 'aXbXc', '%bXX'}, {'gsub', 'THE (quick) fox', "
        "'%f[%a]%a+', '*'},\n"
        "  {'find', 'THE (quick) fox', '%f[%a]%a+%f[%A]'}, {'match', 'x', '%f'},\n"
        "  {'match', 'x', '%fx'}, {'find', 'ab', '%f[%z]'}, {'find', 'a', '%f[a]'},\n"
        /* gmatch */
        "  {'gmatch', 'one two  three', '%a+'}, {'gmatch', 'k1=v1, k2=v2', '(%w+)=(%w+)'},\n"
        "  {'gmatch', 'abc', ''}, {'gmatch', 'abc', 'x*'}, {'gmatch', 'abc', '()'},\n"
        "  {'gmatch', '^a^a', '^a'}, {'gmatch', 'abcabc', 'b', 3}, {'gmatch', 'abc', '.', -1},\n"
        "  {'gmatch', 'abc', '.', 10}, {'gmatch', 'a', '('},\n"
        /* gsub */
        "  {'gsub', 'hello world', 'o', '0'}, {'gsub', 'hello world', '(%w+)', '<%1>'},\n"
        "  {'gsub', 'hello world', '%w+', '%0 %0', 1}, {'gsub', 'abc', '', '-'},\n"
        "  {'gsub', 'abc', 'x*', '-'}, {'gsub', 'hello world', '(%w+)', T.up},\n"
        "  {'gsub', 'hello world', '%w+', map}, {'gsub', 'abc', '%w', T.keep},\n"
        "  {'gsub', 'abc', '%w', T.no}, {'gsub', 'abc', '%w', T.num}, {'gsub', 'abc', '%w', "
        "T.bad},\n"
        "  {'gsub', 'abc', '%w', '%2'}, {'gsub', 'abc', '(%w)', '%2'}, {'gsub', 'abc', '%w', "
        "'%'},\n"
        "  {'gsub', 'abc', '%w', '%x'}, {'gsub', 'abc', '%w', '%%'}, {'gsub', 'abc', '()%w', "
        "'%1'},\n"
        "  {'gsub', 'abc', '^%w', 'X'}, {'gsub', 'abc', '%w', 'X', 0}, {'gsub', 'abc', '%w', 'X', "
        "-1},\n"
        "  {'gsub', 'abc', '%w', 5}, {'gsub', 'abc', '%w', true}, {'gsub', 'abc', '%w'},\n"
        "  {'gsub', 'a.b', '%.', '%%'}, {'gsub', 'abc', '(', 'x'}, {'gsub', 'abc', '.', {a = 1}},\n"
        "  {'gsub', 'a\\0b', '%z', 'Z'}, {'gsub', 'a\\0b', '.', '[%0]'},\n"
        "}\n"
        "return differences(cases)\n");
    CHECK_STR(diff, "");
    lua_close(L);
}

/* Random patterns and subjects from small alphabets: the two agree on all of them. */
static void test_random_patterns_match_lua(void)
{
    lua_State *L = new_state();
    const char *diff;

    CHECK_STR(run(L, compare_lib), "");
    diff =
        run(L, "local items = { 'a', 'b', '.', '%a', '%d', '[ab]', '[^a]', '%%', 'x' }\n"
               "local suffixes = { '', '', '*', '+', '-', '?' }\n"
               "local extras = { '(', ')', '()', '^', '$', '%1', '%b()', '%f[%a]', '' }\n"
               "local chars = { 'a', 'b', 'x', '1', '(', ')', '%', ' ' }\n"
               "math.randomseed(14)\n"
               "local function pick(t) return t[math.random(#t)] end\n"
               "local cases = {}\n"
               "for i = 1, 4000 do\n"
               "  local p = {}\n"
               "  for j = 1, math.random(0, 5) do\n"
               "    if math.random() < 0.2 then p[#p + 1] = pick(extras) end\n"
               "    p[#p + 1] = pick(items) .. pick(suffixes)\n"
               "  end\n"
               "  local s = {}\n"
               "  for j = 1, math.random(0, 10) do s[#s + 1] = pick(chars) end\n"
               "  local fn = pick({ 'find', 'match', 'gmatch', 'gsub' })\n"
               "  local case = { fn, table.concat(s), table.concat(p) }\n"
               "  if fn == 'gsub' then case[4] = '<%0>' end\n"
               "  if fn ~= 'gsub' and math.random() < 0.3 then case[4] = math.random(-3, 12) end\n"
               "  cases[#cases + 1] = case\n"
               "end\n"
               "return differences(cases)\n");
    CHECK_STR(diff, "");
    lua_close(L);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Work is charged as it goes: a backtracking pattern is stopped when the meter says so. */
static void test_steps_are_charged(void)
{
    lua_State *L = new_state();
    double start;

    /* A match that succeeds at once costs a few steps, charged at the end of the call. */
    CHECK_STR(run(L, "return tostring(bounded.find('hello', 'l+'))"), "3");
    CHECK(meter_state.used > 0 && meter_state.used < 100);
    CHECK_INT(meter_state.charges, 1);

    /* Lua's own matcher takes ~12 s on this (16 a's); ours stops at the limit. */
    meter_state = (struct test_meter){.limit = 1000000};
    start = seconds_now();
    CHECK_STR(run(L, "local ok, err = pcall(bounded.find, ('a'):rep(16), ('a*'):rep(16) .. 'b')\n"
                     "return tostring(ok) .. ' ' .. err"),
              "false out of steps");
    printf("  a pattern that backtracks: refused after %lu steps in %.1f ms\n", meter_state.used,
           (seconds_now() - start) * 1e3);
    CHECK(meter_state.used > 1000000 && meter_state.used < 1000000 + 8192);
    CHECK(seconds_now() - start < 2.0);

    /* gsub and gmatch over a long subject are charged per attempt. */
    meter_state = (struct test_meter){.limit = ~0UL};
    CHECK_STR(run(L, "local s = ('x'):rep(100000)\n"
                     "local n = 0\n"
                     "for _ in bounded.gmatch(s, 'y') do n = n + 1 end\n"
                     "local _, k = bounded.gsub(s, 'x', 'y')\n"
                     "return n .. ' ' .. k"),
              "0 100000");
    CHECK(meter_state.used >= 300000);

    /* A plain find costs a step per 16 bytes it may scan. */
    meter_state = (struct test_meter){.limit = ~0UL};
    CHECK_STR(run(L, "return tostring(bounded.find(('x'):rep(1600) .. 'y', 'y', 1, true))"),
              "1601");
    CHECK(meter_state.used >= 100 && meter_state.used < 200);
    lua_close(L);
}

int main(void)
{
    RUN(test_corpus_matches_lua);
    RUN(test_random_patterns_match_lua);
    RUN(test_steps_are_charged);
    return check_summary();
}
