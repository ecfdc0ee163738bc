/*
 * pattern.c: Lua patterns, matched by a backtracking search that counts its steps (see
 * pattern.h for why it is not Lua's own matcher).
 *
 * The language is the Lua 5.4 manual's (section 6.4.1): single-character classes (a byte,
 * '.', %a %c %d %g %l %p %s %u %w %x, the deprecated %z, their upper-case complements,
 * %<punctuation>, and sets [...] with ranges and classes, [^...] for the complement),
 * each optionally followed by '*', '+', '-' or '?'; %bxy, %f[set], back-references
 * %1-%9, captures ( ) and position captures (); '^' anchors at the start of find, match
 * and gsub patterns (gmatch takes it literally, as Lua 5.4 does) and '$' at the end of
 * any pattern.
 */
#include "lua/pattern.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MAX_CAPTURES 32
#define MAX_DEPTH 200 /* nested match_here calls; "pattern too complex" past it */
#define CAPTURE_OPEN (-1)
#define CAPTURE_POSITION (-2)
/* Steps counted before they are charged to the meter. */
#define CHARGE_EVERY 4096UL
/* What a byte costs where the work is a memchr/memcmp-like scan. */
#define SCAN_BYTES_PER_STEP 16
#define SPECIALS "^$*+?.([%-"

struct capture {
    const char *start;
    ptrdiff_t len; /* bytes, or CAPTURE_OPEN or CAPTURE_POSITION */
};

struct matcher {
    lua_State *L;
    const struct pattern_meter *meter;
    const char *subject, *subject_end;
    const char *pattern_end;
    unsigned long uncharged; /* steps counted and not yet charged */
    int depth;               /* match_here calls in progress */
    int level;               /* captures started */
    struct capture capture[MAX_CAPTURES];
};

/* ---- the meter ------------------------------------------------------------------------------- */

static void charge_pending(struct matcher *m)
{
    unsigned long steps = m->uncharged;

    if (steps == 0) return;
    m->uncharged = 0;
    m->meter->charge(m->L, m->meter->ud, steps);
}

static inline void count_steps(struct matcher *m, unsigned long steps)
{
    m->uncharged += steps;
    if (m->uncharged >= CHARGE_EVERY) charge_pending(m);
}

static void matcher_init(struct matcher *m, lua_State *L, const struct pattern_meter *meter,
                         const char *subject, size_t subject_len, const char *pattern_end)
{
    m->L = L;
    m->meter = meter;
    m->subject = subject;
    m->subject_end = subject + subject_len;
    m->pattern_end = pattern_end;
    m->uncharged = 0;
    m->depth = 0;
    m->level = 0;
}

/* ---- single characters ----------------------------------------------------------------------- */

/* Whether byte c is in class %cl (cl a letter), or is cl itself (cl anything else). */
static bool in_class(int c, int cl)
{
    bool in;

    switch (tolower(cl)) {
    case 'a':
        in = isalpha(c);
        break;
    case 'c':
        in = iscntrl(c);
        break;
    case 'd':
        in = isdigit(c);
        break;
    case 'g':
        in = isgraph(c);
        break;
    case 'l':
        in = islower(c);
        break;
    case 'p':
        in = ispunct(c);
        break;
    case 's':
        in = isspace(c);
        break;
    case 'u':
        in = isupper(c);
        break;
    case 'w':
        in = isalnum(c);
        break;
    case 'x':
        in = isxdigit(c);
        break;
    case 'z':
        in = c == 0;
        break; /* deprecated in the manual, still in Lua 5.4 */
    default:
        return cl == c;
    }
    return isupper(cl) ? !in : in;
}

/* Whether byte c is in the set that opens with '[' at `open` and closes at `close`. */
static bool in_set(int c, const char *open, const char *close)
{
    const char *p = open + 1;
    bool complement = *p == '^';

    if (complement) p++;
    for (; p < close; p++) {
        if (*p == '%') {
            p++;
            if (in_class(c, (unsigned char)*p)) return !complement;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return !complement;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return !complement;
        }
    }
    return complement;
}

/*
 * The end of the single-character class that starts at p: one past a byte, '.', %x, or a
 * set's ']'. The first byte of a set (after '[' or "[^") is a member even when it is ']'.
 */
static const char *class_end(struct matcher *m, const char *p)
{
    char c = *p++;

    if (c == '%') {
        if (p >= m->pattern_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (*p == '^') p++;
        do {
            if (p >= m->pattern_end) luaL_error(m->L, "malformed pattern (missing ']')");
            c = *p++;
            if (c == '%' && p < m->pattern_end) p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* Whether the subject byte at s exists and is in the class from p to ep (its end). */
static bool single_matches(struct matcher *m, const char *s, const char *p, const char *ep)
{
    int c;

    if (s >= m->subject_end) return false;
    count_steps(m, 1);
    c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return true;
    case '%':
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* ---- the search ------------------------------------------------------------------------------ */

static const char *match_here(struct matcher *m, const char *s, const char *p);

/* x*: the longest run of the class first, then shorter ones, each followed by the rest. */
static const char *expand_longest(struct matcher *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t run = 0;

    while (single_matches(m, s + run, p, ep))
        run++;
    for (; run >= 0; run--) {
        const char *end = match_here(m, s + run, ep + 1);
        if (end) return end;
    }
    return NULL;
}

/* x-: the rest of the pattern first, then one more byte of the class at a time. */
static const char *expand_shortest(struct matcher *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *end = match_here(m, s, ep + 1);
        if (end) return end;
        if (!single_matches(m, s, p, ep)) return NULL;
        s++;
    }
}

static const char *capture_open(struct matcher *m, const char *s, const char *p, ptrdiff_t kind)
{
    const char *end;

    if (m->level >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
    m->capture[m->level].start = s;
    m->capture[m->level].len = kind;
    m->level++;
    end = match_here(m, s, p);
    if (end == NULL) m->level--;
    return end;
}

/* ')': closes the innermost capture still open. */
static const char *capture_close(struct matcher *m, const char *s, const char *p)
{
    int i = m->level - 1;
    const char *end;

    while (i >= 0 && m->capture[i].len != CAPTURE_OPEN)
        i--;
    if (i < 0) luaL_error(m->L, "invalid pattern capture");
    m->capture[i].len = s - m->capture[i].start;
    end = match_here(m, s, p);
    if (end == NULL) m->capture[i].len = CAPTURE_OPEN;
    return end;
}

/* %1-%9: the text of a closed capture again. A position capture matches nothing. */
static const char *match_backref(struct matcher *m, const char *s, int digit)
{
    int i = digit - '1';
    ptrdiff_t len;

    if (i < 0 || i >= m->level || m->capture[i].len == CAPTURE_OPEN)
        luaL_error(m->L, "invalid capture index %%%d", i + 1);
    len = m->capture[i].len;
    if (len < 0 || m->subject_end - s < len) return NULL;
    count_steps(m, 1 + (unsigned long)len / SCAN_BYTES_PER_STEP);
    return memcmp(m->capture[i].start, s, (size_t)len) == 0 ? s + len : NULL;
}

/* %bxy at s: from an x to its matching y, counting nested x...y pairs. */
static const char *match_balance(struct matcher *m, const char *s, const char *p)
{
    int nesting = 1;
    char open, close;

    if (p + 1 >= m->pattern_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    open = p[0];
    close = p[1];
    if (s >= m->subject_end || *s != open) return NULL;
    while (++s < m->subject_end) {
        count_steps(m, 1);
        if (*s == close) {
            if (--nesting == 0) return s + 1;
        } else if (*s == open) {
            nesting++;
        }
    }
    return NULL;
}

/* %f[set] at s: the byte before s is not in the set and the byte at s is (the subject's
 * ends count as '\0'). Returns the pattern after the set, or NULL. */
static const char *match_frontier(struct matcher *m, const char *s, const char *p)
{
    const char *ep;
    int before, at;

    if (*p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
    ep = class_end(m, p);
    before = s == m->subject ? 0 : (unsigned char)s[-1];
    at = s < m->subject_end ? (unsigned char)*s : 0;
    return !in_set(before, p, ep - 1) && in_set(at, p, ep - 1) ? ep : NULL;
}

/*
 * Matches the pattern from p against the subject from s. Returns the end of the match, or
 * NULL. Items that need no backtracking are taken in the loop; the others recurse.
 */
static const char *match_here(struct matcher *m, const char *s, const char *p)
{
    const char *end = NULL;

    if (m->depth >= MAX_DEPTH) luaL_error(m->L, "pattern too complex");
    m->depth++;
    for (;;) {
        const char *ep;

        count_steps(m, 1);
        if (p == m->pattern_end) {
            end = s;
            break;
        }
        if (*p == '(') {
            end = p[1] == ')' ? capture_open(m, s, p + 2, CAPTURE_POSITION)
                              : capture_open(m, s, p + 1, CAPTURE_OPEN);
            break;
        }
        if (*p == ')') {
            end = capture_close(m, s, p + 1);
            break;
        }
        if (*p == '$' && p + 1 == m->pattern_end) {
            end = s == m->subject_end ? s : NULL;
            break;
        }
        if (*p == '%' && p[1] == 'b') {
            if ((s = match_balance(m, s, p + 2)) == NULL) break;
            p += 4;
            continue;
        }
        if (*p == '%' && p[1] == 'f') {
            if ((p = match_frontier(m, s, p + 2)) == NULL) break;
            continue;
        }
        if (*p == '%' && p[1] >= '0' && p[1] <= '9') {
            if ((s = match_backref(m, s, p[1])) == NULL) break;
            p += 2;
            continue;
        }

        /* A single-character class and its optional suffix. */
        ep = class_end(m, p);
        if (!single_matches(m, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero repetitions will do */
                p = ep + 1;
                continue;
            }
            break;
        }
        if (*ep == '?') {
            if ((end = match_here(m, s + 1, ep + 1)) != NULL) break;
            p = ep + 1;
            continue;
        }
        if (*ep == '+' || *ep == '*') {
            end = expand_longest(m, *ep == '+' ? s + 1 : s, p, ep);
            break;
        }
        if (*ep == '-') {
            end = expand_shortest(m, s, p, ep);
            break;
        }
        s++;
        p = ep;
    }
    m->depth--;
    return end;
}

/* One attempt at position s, with no capture from an earlier attempt. */
static const char *match_at(struct matcher *m, const char *s, const char *p)
{
    m->level = 0;
    m->depth = 0;
    return match_here(m, s, p);
}

/* ---- results --------------------------------------------------------------------------------- */

/* Pushes capture i, or the whole match s..e when the pattern has no captures and i is 0. */
static void push_capture(struct matcher *m, int i, const char *s, const char *e)
{
    ptrdiff_t len;

    if (i >= m->level) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s));
        return;
    }
    len = m->capture[i].len;
    if (len == CAPTURE_OPEN) luaL_error(m->L, "unfinished capture");
    if (len == CAPTURE_POSITION)
        lua_pushinteger(m->L, (lua_Integer)(m->capture[i].start - m->subject) + 1);
    else
        lua_pushlstring(m->L, m->capture[i].start, (size_t)len);
}

/* Pushes every capture (the whole match s..e when there are none and s is given). */
static int push_captures(struct matcher *m, const char *s, const char *e)
{
    int n = m->level == 0 && s != NULL ? 1 : m->level;

    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* ---- the library functions ------------------------------------------------------------------- */

static const struct pattern_meter *meter_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* The 0-based offset where a search starts, from a 1-based init that may count from the
 * end (negative); past the end is len + 1 or more. */
static size_t start_offset(lua_Integer init, size_t len)
{
    if (init > 0) return (size_t)init - 1;
    if (init == 0 || init < -(lua_Integer)len) return 0;
    return len - (size_t)-init;
}

static bool has_specials(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != '\0' && strchr(SPECIALS, p[i]) != NULL) return true;
    return false;
}

static int find_or_match(lua_State *L, bool find)
{
    size_t subject_len, pattern_len;
    const char *s = luaL_checklstring(L, 1, &subject_len);
    const char *p = luaL_checklstring(L, 2, &pattern_len);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), subject_len);
    const char *pattern_end = p + pattern_len;
    const char *from = s + init;
    struct matcher m;
    bool anchored;

    if (init > subject_len) {
        luaL_pushfail(L);
        return 1;
    }
    matcher_init(&m, L, meter_of(L), s, subject_len, pattern_end);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, pattern_len))) {
        const char *at;
        count_steps(&m, 1 + (subject_len - init) / SCAN_BYTES_PER_STEP);
        charge_pending(&m);
        at = memmem(from, subject_len - init, p, pattern_len);
        if (at == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(at - s) + 1);
        lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)pattern_len);
        return 2;
    }
    anchored = *p == '^';
    if (anchored) p++;
    do {
        const char *end = match_at(&m, from, p);
        if (end != NULL) {
            charge_pending(&m);
            if (!find) return push_captures(&m, from, end);
            lua_pushinteger(L, (lua_Integer)(from - s) + 1);
            lua_pushinteger(L, (lua_Integer)(end - s));
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (from++ < m.subject_end && !anchored);
    charge_pending(&m);
    luaL_pushfail(L);
    return 1;
}

static int pattern_find(lua_State *L)
{
    return find_or_match(L, true);
}

static int pattern_match(lua_State *L)
{
    return find_or_match(L, false);
}

/* Where gmatch's iterator is between calls (offsets into the subject). */
struct gmatch_state {
    size_t next;     /* where the next search starts; past the end when done */
    size_t last_end; /* where the last match ended, SIZE_MAX before the first */
};

/* The iterator: upvalues subject, pattern, state, meter. */
static int gmatch_next(lua_State *L)
{
    size_t subject_len, pattern_len;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &subject_len);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &pattern_len);
    struct gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
    struct matcher m;

    matcher_init(&m, L, lua_touserdata(L, lua_upvalueindex(4)), s, subject_len, p + pattern_len);
    for (size_t at = g->next; at <= subject_len; at++) {
        const char *end = match_at(&m, s + at, p);
        if (end != NULL && (size_t)(end - s) != g->last_end) {
            g->next = g->last_end = (size_t)(end - s);
            charge_pending(&m);
            return push_captures(&m, s + at, end);
        }
    }
    charge_pending(&m);
    return 0;
}

static int pattern_gmatch(lua_State *L)
{
    size_t subject_len;
    size_t init;
    struct gmatch_state *g;

    luaL_checklstring(L, 1, &subject_len);
    luaL_checkstring(L, 2);
    init = start_offset(luaL_optinteger(L, 3, 1), subject_len);
    lua_settop(L, 2); /* the strings (a number converted in place) become upvalues */
    g = lua_newuserdatauv(L, sizeof *g, 0);
    g->next = init > subject_len ? subject_len + 1 : init;
    g->last_end = SIZE_MAX;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* gsub's replacement string: %0-%9 are the match and its captures, %% a '%'. */
static void add_template(struct matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = m->L;
    size_t len;
    const char *t = lua_tolstring(L, 3, &len);
    const char *t_end = t + len;

    count_steps(m, 1 + len / SCAN_BYTES_PER_STEP);
    while (t < t_end) {
        const char *escape = memchr(t, '%', (size_t)(t_end - t));
        char c;

        if (escape == NULL) {
            luaL_addlstring(b, t, (size_t)(t_end - t));
            break;
        }
        luaL_addlstring(b, t, (size_t)(escape - t));
        c = escape[1]; /* '\0' when the template ends with '%' */
        if (c == '%') {
            luaL_addchar(b, '%');
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (c >= '1' && c <= '9') {
            push_capture(m, c - '1', s, e);
            luaL_addvalue(b);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        t = escape + 2;
    }
}

/* Adds the replacement of the match s..e; returns whether it differs from the match. */
static bool add_replacement(struct matcher *m, luaL_Buffer *b, const char *s, const char *e,
                            int repl_type)
{
    lua_State *L = m->L;

    if (repl_type == LUA_TFUNCTION) {
        int n;
        lua_pushvalue(L, 3);
        n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else if (repl_type == LUA_TTABLE) {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_template(m, b, s, e);
        return true;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: the match stays */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return false;
    }
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return true;
}

static int pattern_gsub(lua_State *L)
{
    size_t subject_len, pattern_len;
    const char *s = luaL_checklstring(L, 1, &subject_len);
    const char *p = luaL_checklstring(L, 2, &pattern_len);
    int repl_type = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)subject_len + 1);
    const char *pattern_end = p + pattern_len;
    const char *at = s, *last_end = NULL;
    lua_Integer n = 0;
    bool changed = false, anchored;
    struct matcher m;
    luaL_Buffer b;

    luaL_argexpected(L,
                     repl_type == LUA_TNUMBER || repl_type == LUA_TSTRING ||
                         repl_type == LUA_TFUNCTION || repl_type == LUA_TTABLE,
                     3, "string/function/table");
    luaL_buffinit(L, &b);
    anchored = *p == '^';
    if (anchored) p++;
    matcher_init(&m, L, meter_of(L), s, subject_len, pattern_end);
    while (n < max_n) {
        const char *end = match_at(&m, at, p);
        if (end != NULL && end != last_end) {
            n++;
            changed = add_replacement(&m, &b, at, end, repl_type) || changed;
            at = last_end = end;
        } else if (at < m.subject_end) {
            luaL_addchar(&b, *at++);
        } else {
            break;
        }
        if (anchored) break;
    }
    charge_pending(&m);
    if (changed) {
        luaL_addlstring(&b, at, (size_t)(m.subject_end - at));
        luaL_pushresult(&b);
    } else {
        lua_pushvalue(L, 1);
    }
    lua_pushinteger(L, n);
    return 2;
}

void pattern_register(lua_State *L, int table, const struct pattern_meter *meter)
{
    static const luaL_Reg functions[] = {{"find", pattern_find},
                                         {"match", pattern_match},
                                         {"gmatch", pattern_gmatch},
                                         {"gsub", pattern_gsub},
                                         {NULL, NULL}};

    lua_pushvalue(L, table);
    lua_pushlightuserdata(L, (void *)meter);
    luaL_setfuncs(L, functions, 1);
    lua_pop(L, 1);
}
