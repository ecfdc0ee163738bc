/*
 * policy.h: the Lua policy engine, the hooks by which an operator changes how the cache
 * picks upstreams, expires and evicts blobs, and writes its access log.
 *
 * A policy is a Lua file that returns a table of hooks (functions). The engine loads the
 * built-in defaults (default.lua in the builtin directory) and then every "*.lua" file in
 * the config's drop-in directory (downstream option `policydir`), in byte-wise name order;
 * a later file overrides the hooks it defines and leaves the others. Names starting with
 * '.' are skipped, and so are subdirectories: put helper modules there and `require` them
 * ("lib.helpers" is <dir>/lib/helpers.lua).
 *
 * The Lua state is a sandbox: only the base, table, string, math and utf8 libraries, no
 * io, os, debug, package, dofile, loadfile or string.dump; `load` accepts text chunks
 * only; `print` goes to the diagnostic log. `require` searches the builtin directory,
 * then the drop-in directory, for text files only, and caches what a module returns
 * (`require "default"` gives the built-in hooks, for a drop-in that wraps one). The
 * global `cache` (also `require "cache"`) offers:
 *   cache.now()            wall-clock seconds since the epoch, a float
 *   cache.log(level, msg)  a diagnostic line "policy: msg" at "error", "warn", "info" or
 *                          "debug"; at most POLICY_LOG_BURST lines per POLICY_LOG_INTERVAL
 *                          seconds, the rest are counted and reported, not written
 *   cache.config           read-only: blobttl (seconds, or nil), upstreams (a list of
 *                          {index=1.., originhost=..., upstreamhosts={...}}), log =
 *                          {level=..., formatter="text"|"json", fields={{key=, value=}...}
 *                          in the config's order}, storage_root, policydir (or nil)
 * A read-only table refuses assignment, rawset and setmetatable with an error; read it
 * with ., [], #, ipairs and pairs (pairs hands out the read-only view, never the table
 * behind it; next and rawget see the empty view).
 *
 * Every hook call runs under lua_pcall with a traceback, a budget and a cap on the
 * state's memory. The budget is counted in steps, so that no work escapes it: a Lua
 * instruction is a step, and so is a step of pattern matching (find, match, gmatch and
 * gsub are a matcher that counts them: lua/pattern.h), an element or byte that another
 * library function goes through in C (string.rep, table.sort, ...: lua/sandbox.h) and
 * every 64 bytes allocated. A call also has a deadline of 1 us per step of its budget
 * (1 s for the default), checked every 1,000 instructions, for work no step counts
 * (one instruction comparing two strings of many MiB). A policy cannot make a __gc
 * finalizer (setmetatable refuses a metatable with a __gc field): Lua runs finalizers
 * with no hook, so one would run unbounded. No policy code runs outside a hook call;
 * a reload or policy_engine_free closes a state in time proportional to its memory.
 *
 * A hook that raises an error, runs past its budget or deadline, hits the cap or returns
 * a value of the wrong type is logged (at most one line per hook per POLICY_LOG_INTERVAL
 * seconds; the line counts the failures not logged since the last one), counted
 * (policy_error_count), and makes the call return a negative error: the caller then does
 * what the built-in C default does, for that call only. A policy that catches the budget
 * error with pcall gains nothing: once past its budget, every further instruction of that
 * call fails. The bounds are there for mistakes (a loop, a pattern that backtracks, a
 * string built by repeated concatenation): a call that runs into the budget has cost the
 * loop its budget's worth of work, one that fills the memory cap the time to fill and
 * collect it, and none goes on past its deadline by more than 1,000 instructions.
 *
 * State kept by policies (the default's round-robin cursors) lives in the Lua state and
 * starts afresh at a reload: after SIGHUP the rotation begins again at the first host.
 *
 * Errors are negative errno values and 0 is success:
 *   -ENOENT     the hook is not defined: use the built-in default (not counted, not logged)
 *   -EIO        the hook raised an error
 *   -ETIMEDOUT  the hook ran past its budget or its deadline
 *   -ENOMEM     the hook hit the memory cap (or malloc failed)
 *   -EINVAL     the hook returned a value of the wrong type, or one that is not allowed
 *   -ERANGE     the caller passed an upstream index that the config does not have
 * The access-log entries, requests and blobs handed to hooks never contain a credential
 * (no Authorization header, no token, no userinfo): keep it that way when adding fields.
 *
 * Everything here runs on the loop thread; an engine is not safe to share between threads.
 */
#ifndef CC_POLICY_H
#define CC_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct policy_engine;

enum policy_hook {
    POLICY_HOOK_SELECT_UPSTREAM,
    POLICY_HOOK_BLOB_TTL,
    POLICY_HOOK_FORMAT_LOG,
    POLICY_HOOK_EVICT,
    POLICY_HOOK_SELECT_CACHE, /* the front's: which cache a blob download goes to */
    POLICY_HOOK_COUNT
};

/* Defaults of policy_engine_set_limits. */
#define POLICY_DEFAULT_INSTRUCTIONS 1000000UL
#define POLICY_DEFAULT_MEMORY ((size_t)32 << 20)
/* evict gets its budget plus this many instructions per candidate (it sorts them). */
#define POLICY_EVICT_INSTRUCTIONS_PER_CANDIDATE 1000UL
/* Seconds between two logged failures of one hook, and cache.log's window. */
#define POLICY_LOG_INTERVAL 10.0
/* cache.log lines written per window; the rest are counted. */
#define POLICY_LOG_BURST 20

/* A request, as select_upstream sees it: req = {method, repository, reference, digest,
 * kind}. Strings are NUL-terminated and only read during the call; NULL becomes nil. */
struct policy_request {
    const char *method;     /* "GET", "HEAD" */
    const char *repository; /* "library/alpine", or NULL for /v2/ and _catalog */
    const char *reference;  /* tag or digest of a manifest, digest of a blob, or NULL */
    const char *digest;     /* the reference when it is a digest, else NULL */
    const char *kind;       /* "base", "manifest", "blob", "tags", "referrers", "catalog" */
};

/* A stored blob, as blob_ttl and evict see it: {digest, size, last_pulled, created,
 * repositories}. Times are seconds since the epoch. */
struct policy_blob {
    const char *digest;              /* "sha256:..." */
    uint64_t size;                   /* bytes */
    double last_pulled;              /* the last time a client pulled it */
    bool has_created;                /* false: created is nil */
    double created;                  /* when the cache stored it */
    const char *const *repositories; /* repositories it was last pulled from; may be NULL */
    size_t n_repositories;
};

/* One access-log line, as format_log sees it: struct log_access_entry of core/log.h.
 * NULL strings become nil; so do status 0, duration_ms < 0 and time <= 0 (the hook then
 * uses cache.now()). */
#include "base/log.h"
#include "base/metrics.h"

/*
 * Creates an engine and loads its policies: builtin_dir/default.lua, then the drop-in
 * files of cfg->policydir. builtin_dir NULL means CC_POLICY_INSTALL_DIR, where the build
 * installs policies/ (a binary run from the build tree is given the source tree's
 * policies/ explicitly, as the tests do: see main.c). The engine copies
 * what it needs from cfg (which may be NULL: no upstreams, no blobttl, text logs), so
 * cfg may be freed afterwards. Returns 0 and the engine in *out, or a negative error
 * and a message in err (always NUL-terminated) that names the file and line at fault:
 * -ENOENT (no builtin directory, or the drop-in directory cannot be read), -EINVAL (a
 * file does not load, or does not return a table of functions), -ENOMEM.
 */
int policy_engine_new(const struct config *cfg, const char *builtin_dir, struct policy_engine **out,
                      char *err, size_t errlen);

/*
 * Builds a new Lua state from the files as they are now, with cfg (NULL: the config
 * the engine has), and swaps it in when every file loaded. When one did not, the
 * running state and config stay and the error is as for policy_engine_new. Error
 * counters are kept across reloads.
 */
int policy_engine_reload(struct policy_engine *pe, const struct config *cfg, char *err,
                         size_t errlen);

/* Closes the Lua state and frees the engine. NULL is a no-op. */
void policy_engine_free(struct policy_engine *pe);

/* The clock behind cache.now() and the log rate limits (default: CLOCK_REALTIME). */
void policy_engine_set_clock(struct policy_engine *pe, double (*now)(void *ud), void *ud);

/*
 * The budget of one hook call (and of loading one file), in steps (see above), and the
 * cap on the memory of the Lua state; 0 keeps the default. Applies from the next call
 * on, the memory cap at once (memory already held is not taken back).
 */
void policy_engine_set_limits(struct policy_engine *pe, unsigned long instructions,
                              size_t memory_bytes);

/* Bytes the Lua state holds now. */
size_t policy_engine_memory(const struct policy_engine *pe);

/* "select_upstream", "blob_ttl", "format_log", "evict"; "?" for anything else. */
const char *policy_hook_name(enum policy_hook h);

/* True when some policy defines the hook. */
bool policy_has_hook(const struct policy_engine *pe, enum policy_hook h);

/*
 * True when the hook in force is the one of the built-in default.lua (no drop-in
 * replaced it). The core has C equivalents of some built-in hooks (the access-log
 * format), tested byte for byte against them, and runs those instead of the Lua call
 * on its hot paths.
 */
bool policy_hook_is_builtin(const struct policy_engine *pe, enum policy_hook h);

/* Failed calls of the hook since the engine was created (reloads do not reset it). */
uint64_t policy_error_count(const struct policy_engine *pe, enum policy_hook h);
/* A metrics_render_fn over a struct policy_engine: failed hook calls, by hook. */
void policy_render_metrics(const void *policy_engine, struct textbuf *out);

/*
 * select_upstream(req, upstream) for the config's upstreams[upstream_index]; upstream
 * is the same read-only table as cache.config.upstreams[upstream_index + 1]. The hook
 * returns a non-empty list of base URLs to try in order, each exactly the originhost or
 * one of the upstreamhosts of that entry as written in the config; any other string is
 * -EINVAL. A URL listed twice is kept once. On 0, *urls_out is a malloc'd array of
 * *n_out malloc'd strings (free with policy_free_list; it fits chain_spec.bases).
 */
int policy_select_upstream(struct policy_engine *pe, const struct policy_request *req,
                           size_t upstream_index, char ***urls_out, size_t *n_out);

/*
 * blob_ttl(blob) -> seconds, a number >= 0, that a blob not pulled again is kept
 * counted from its last pull, or nil to keep it. On 0, *has_ttl says whether there is
 * a TTL and *ttl_seconds holds it (0 when there is none).
 */
int policy_blob_ttl(struct policy_engine *pe, const struct policy_blob *blob, bool *has_ttl,
                    double *ttl_seconds);

/*
 * format_log(entry) -> the access-log line, a string (without a newline; hand it to
 * log_access_line, which escapes control bytes). On 0 buf holds it NUL-terminated and
 * *out_len its length; a longer string is cut to len - 1 bytes. len must be > 0.
 */
int policy_format_log(struct policy_engine *pe, const struct log_access_entry *entry, char *buf,
                      size_t len, size_t *out_len);

/*
 * evict(candidates, bytes_needed) -> a list of the candidates' digests to delete, in
 * the order to delete them. Digests that are not among the candidates are ignored, one
 * named twice counts once. On 0, *victims_out is a malloc'd array (free()) of *n_out
 * indexes into cands (NULL when n_out is 0). The budget grows with n (see
 * POLICY_EVICT_INSTRUCTIONS_PER_CANDIDATE); each candidate costs the Lua state a few
 * hundred bytes, so pass at most some tens of thousands per call.
 */
int policy_evict(struct policy_engine *pe, const struct policy_blob *cands, size_t n,
                 uint64_t bytes_needed, size_t **victims_out, size_t *n_out);

/* A cache registered with the front, as select_cache sees it: {id, name, host}. */
struct policy_cache {
    const char *id;
    const char *name;
    const char *host;
};

/*
 * select_cache(req, user, caches), on the front, for a blob GET of a signed-in user:
 * req = {method, repository, digest, kind = "blob", remote_addr ("ip:port")}, user =
 * {name, cache (the name of the cache the user chose, or nil)}, caches = the registered
 * caches, a list of {id, name, host} in the order of their ids. The hook returns the name
 * of one of them (the download is redirected there) or nil (no redirect: the front
 * relays it from the origin); a name not in the list is -EINVAL. On 0, *chosen is the
 * chosen cache's index in caches, or -1 for nil. The built-in hook returns user.cache.
 */
int policy_select_cache(struct policy_engine *pe, const struct policy_request *req,
                        const char *remote_addr, const char *user, const char *user_cache,
                        const struct policy_cache *caches, size_t n, long *chosen);

/* Frees a list from policy_select_upstream: each of the n strings, then the array. */
void policy_free_list(char **list, size_t n);

#endif
