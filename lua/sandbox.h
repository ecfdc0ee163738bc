/*
 * sandbox.h: the Lua libraries a policy sees, and read-only tables (internal to lua/).
 *
 * sandbox_open opens the base, table, string, math and utf8 libraries into a fresh state
 * and changes what a policy could use to escape its budget or the cache's code:
 *   - no dofile, loadfile or string.dump; load takes text chunks only;
 *   - print(...) goes to host->print, one line per call;
 *   - setmetatable refuses a metatable with a __gc field, whatever its value (even
 *     false). Lua runs finalizers with hooks off, so a __gc function would run outside
 *     the budget, during any allocation or in lua_close. Lua marks an object for
 *     finalization only when its metatable has a __gc field at the moment setmetatable
 *     runs, so adding __gc to the metatable afterwards (plainly or with rawset) never
 *     makes a finalizer, and refusing a __gc that is present but false closes the one
 *     route that would (false, then a function). No other function of the sandbox sets
 *     a metatable, and debug.setmetatable is not there: policy code can make no
 *     finalizer at all, so collecting garbage and closing a state run no policy code;
 *   - rawset refuses the read-only tables of sandbox_make_readonly;
 *   - string.find, match, gmatch and gsub are pattern.h's: their steps are charged;
 *   - the library functions whose work is not bounded by what they allocate charge it
 *     before they run, one step per element, byte or copy they will go through:
 *     string.rep (copies; none when the result would not fit the memory cap, as its
 *     allocation is then refused before any copy), string.byte, utf8.codepoint and
 *     utf8.len (bytes), table.concat, table.unpack and table.move (elements),
 *     table.insert and table.remove with a position (elements moved), table.sort
 *     (n * log2 n), collectgarbage "collect" and "step" (one step per 64 bytes the state
 *     holds) and load (one step per byte of source; a reader function's pieces as they
 *     come).
 * The string, table and utf8 tables a policy sees are copies; the libraries' own tables
 * (with the unmetered functions) stay in the registry's loaded-modules table, where no
 * policy can reach them and where Lua finds a function's name for error messages.
 *
 * host->charge is the budget: it returns when the steps are allowed and raises a Lua
 * error (it does not return) when they are not. What the other work of a call costs
 * (instructions, allocation) is the caller's to count. host is copied; its ud must
 * outlive the state. Every host function is called during a Lua call on the state,
 * from the thread running it; none may yield.
 */
#ifndef CC_SANDBOX_H
#define CC_SANDBOX_H

#include <lua.h>
#include <stddef.h>

struct sandbox_host {
    void (*charge)(lua_State *L, void *ud, unsigned long steps);
    void (*print)(void *ud, const char *line); /* a line of print(...) output */
    size_t (*memory_limit)(void *ud);          /* the cap on the state's memory */
    void *ud;
};

/* Opens the sandboxed libraries into L (run it under lua_pcall: it allocates). */
void sandbox_open(lua_State *L, const struct sandbox_host *host);

/*
 * Replaces the table at the top of the stack with a read-only view of it, nested tables
 * too: reading with ., [], #, ipairs and pairs works; assignment, rawset and
 * setmetatable raise an error, and pairs hands out the view, never the table behind it.
 * next() and rawget see the empty view.
 */
void sandbox_make_readonly(lua_State *L);

#endif
