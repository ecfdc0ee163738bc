/*
 * pattern.h: Lua 5.4's pattern functions (string.find, string.match, string.gmatch,
 * string.gsub) with a meter on their work, for the policy sandbox (internal to lua/).
 *
 * Why: Lua's own matcher backtracks in C, where no count hook fires, and a pattern of a
 * few dozen bytes can take exponential time in the length of a short subject
 * (string.find(("a"):rep(16), ("a*"):rep(16) .. "b") runs 12 s; each further pair of
 * "a"s multiplies that by 16). A drop-in that matches a client-controlled field (a URI, a
 * User-Agent) would let any client stall the loop. Three ways to bound it were weighed:
 *   - refusing patterns or subjects past a size: the example above is 33 and 16 bytes,
 *     so a size limit that stops it also refuses ordinary use;
 *   - a complexity rule (at most k quantifiers): the worst case grows as n^(k+1) in the
 *     subject's length n, so any k that admits "^(%w+)=(.*)$" admits seconds of work on
 *     a subject of a few KiB, while most such patterns are linear in practice;
 *   - counting the matcher's steps: exact, refuses only what really runs long.
 * So this is a matcher of its own (the same language and results as Lua 5.4's, checked
 * against it by tests/unit/test_pattern.c) that counts its steps and charges them to a
 * meter as it goes. A step is one attempt to match a pattern item at a subject position
 * or one subject byte looked at (about the cost of a Lua VM instruction); a plain find
 * (no special characters, or plain = true) costs one step per 16 subject bytes it may
 * scan. The meter decides: when it has no steps left its charge function raises a Lua
 * error, which ends the match wherever it is (the matcher holds nothing that needs
 * freeing; gsub's buffer lives on the Lua stack).
 *
 * Behaviour matches Lua 5.4's string library: the same arguments (init, plain, the
 * replacement as string, table or function, the maximum number of replacements), the
 * same results, and the same errors for malformed patterns, with "pattern too complex"
 * past 200 nested items and "too many captures" past 32. The functions read their
 * subject and pattern from the Lua stack and keep no pointer to them past the call,
 * except gmatch's iterator, which keeps both strings as its upvalues.
 */
#ifndef CC_PATTERN_H
#define CC_PATTERN_H

#include <lua.h>

/*
 * What matching costs goes to charge(L, ud, steps), called from inside the pattern
 * functions every few thousand steps and once at the end of each call. It returns when
 * the steps are allowed and raises a Lua error (lua_error: it does not return) when not.
 * A charge function may also run no Lua code and must not yield.
 */
struct pattern_meter {
    void (*charge)(lua_State *L, void *ud, unsigned long steps);
    void *ud;
};

/*
 * Sets find, match, gmatch and gsub in the table at index `table` (the string library,
 * whose table is also the strings' __index) to the metered functions. The meter is kept
 * by pointer: it must outlive the state.
 */
void pattern_register(lua_State *L, int table, const struct pattern_meter *meter);

#endif
