/*
 * policy.h: the Lua policy engine, the hooks by which an operator changes how the cache
 * picks upstreams, expires, evicts and admits blobs, and writes its access log.
 *
 * The policies that run are Lua: the core calls select_upstream, blob_ttl, evict and
 * admit of the files loaded (the defaults of policies/, as installed, and the drop-ins),
 * never a C copy of them. The one C twin is format_log's line, per request, and the core
 * runs it only while policy_hook_is_shipped says the loaded files are the shipped ones.
 * When a hook is missing or fails, the caller falls back to a plain last resort that is
 * not a policy (core/app/policies.h): the config's order of upstreams, the configured
 * blobttl, least recently pulled first, store, the C line.
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
    POLICY_HOOK_ADMIT,
    POLICY_HOOK_ON_UPSTREAM_FAILURE,
    POLICY_HOOK_SELECT_CACHE, /* the front's: which cache a blob download goes to */
    POLICY_HOOK_COUNT
};

/* Defaults of policy_engine_set_limits. */
#define POLICY_DEFAULT_INSTRUCTIONS 1000000UL
#define POLICY_DEFAULT_MEMORY ((size_t)32 << 20)
/* evict gets its budget plus this many instructions per candidate (it sorts them). */
#define POLICY_EVICT_INSTRUCTIONS_PER_CANDIDATE 1000UL
/* Seconds between two logged failures of one hook, and cache.log's window. */
/* cache.turn keeps counts for upstreams entries 1..POLICY_TURNS (more: nil). */
#define POLICY_TURNS 64
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

/*
 * A blob, as blob_ttl, evict and admit see it. Every field comes from the store on disk,
 * so it survives restarts and is shared by replicas on one root (core/cache/meta.h):
 *   digest        "sha256:<hex>"
 *   size          bytes (admit: the length the upstream announced, nil when it gave none)
 *   created       when the cache stored it: the data file's modification time (nil for
 *                 admit, which runs before anything is stored)
 *   last_pulled   when a client last pulled it: the data file's access time, set on each
 *                 pull (at most once a second per blob)
 *   pulls         how many GET requests were served the blob (hits, misses, coalesced,
 *                 ranges), since it was stored: counted in memory and added to a counter
 *                 file under _content-cache/pulls every few seconds (a crash loses at most
 *                 the last seconds' counts; replicas add to the same file)
 *   repositories  the repositories the origin confirmed the blob in (its 2xx to a HEAD or
 *                 GET of the blob under that name), from the Docker Registry links
 *                 repositories/<name>/_layers/sha256/<hex>/link; sorted, at most
 *                 POLICY_BLOB_MAX_REPOSITORIES
 * Times are seconds since the epoch.
 */
#define POLICY_BLOB_MAX_REPOSITORIES 64
struct policy_blob {
    const char *digest;              /* "sha256:..." */
    bool size_unknown;               /* true: size is nil (admit, no length announced) */
    uint64_t size;                   /* bytes */
    double last_pulled;              /* the last time a client pulled it; <= 0: nil */
    bool has_created;                /* false: created is nil */
    double created;                  /* when the cache stored it */
    bool has_pulls;                  /* false: pulls is nil */
    uint64_t pulls;                  /* GETs served since it was stored */
    const char *const *repositories; /* the repositories it is known in; may be NULL */
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

/*
 * The engines of one process's loops (workers; a Lua state is never shared between
 * threads, so each loop has its own engine): pe's failed hooks are logged at the rate
 * of `first`'s, so that the process logs a failing hook at most once per interval
 * whatever the loops. `first` must outlive pe; its failure record is guarded by a mutex.
 */
void policy_engine_share_log(struct policy_engine *pe, struct policy_engine *first);
/* (It also shares first's cache.turn counters: one round robin for the process.) */

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

/* True when the hook in force is the one of the built-in default.lua (no drop-in
 * replaced it). */
bool policy_hook_is_builtin(const struct policy_engine *pe, enum policy_hook h);

/*
 * True when the hook in force is the built-in one AND every file of the builtin directory
 * that was loaded is byte for byte as shipped: the SHA-256 of each, taken when the cache
 * was built from the files that `install` puts in CC_POLICY_INSTALL_DIR, matched what was
 * read. Only then may the core run a C twin of a hook instead of the Lua call: the one it
 * has is the access-log line (log_format_access), per request, tested byte for byte against
 * policies/logformat.lua. An edited default (or a drop-in) runs as Lua.
 */
bool policy_hook_is_shipped(const struct policy_engine *pe, enum policy_hook h);

/*
 * Where cache.log, print and the lines about failed hooks go: fn(ud, level, line) instead
 * of log_msg (the busted module keeps them for specs). NULL restores log_msg.
 */
void policy_engine_set_log(struct policy_engine *pe,
                           void (*fn)(void *ud, enum log_level level, const char *line), void *ud);

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

/*
 * admit(blob, req) -> true to store a blob that is being fetched for this request, false
 * to stream it through to its clients without storing it. blob is as above with digest
 * and size (nil when the upstream announced none); req as for select_upstream. On 0,
 * *store holds the answer; on an error the caller stores (the default).
 */
int policy_admit(struct policy_engine *pe, const struct policy_blob *blob,
                 const struct policy_request *req, bool *store);

/*
 * What the cache holds for a request whose upstreams all failed (refused, timed out, 5xx),
 * as on_upstream_failure sees it in `known`:
 *   known.upstream, known.error      the upstream tried last, and why it failed
 *   known.tag       {digest, age}    a tag request: the digest the origin last gave for the
 *                                    tag, and how many seconds ago (links.h: current/link)
 *   known.manifest  {digest, stored, in_repository, blobs_stored}   a manifest request (by
 *                                    tag: the tag's digest): on disk, linked in the
 *                                    repository by the origin's answer, and every blob or
 *                                    platform manifest it names on disk too
 *   known.blob      {digest, stored, in_repository}   a blob request
 *   known.auth      {allowed, age, verified_here}    the origin's last answer for this
 *                                    credential and repository (kept on disk as a hash,
 *                                    answers.h) and its age in seconds; with auth.token,
 *                                    verified_here = true: the token was verified by the
 *                                    cache itself now (age 0), no answer needed
 * Absent facts are nil. Strings are only read during the call.
 */
struct policy_outage {
    const char *upstream, *error;
    bool has_tag;
    const char *tag_digest;
    double tag_age;
    bool has_manifest;
    const char *manifest_digest;
    bool manifest_stored, manifest_in_repository, manifest_blobs_stored;
    bool has_blob;
    const char *blob_digest;
    bool blob_stored, blob_in_repository;
    bool has_auth;
    bool auth_allowed, auth_verified_here;
    double auth_age;
};

/*
 * on_upstream_failure(req, known) -> true to answer from what the cache holds, false for
 * the error (503 UNAVAILABLE naming the upstream, or the upstream's failure). The core
 * never serves what is not stored and linked in the repository, nor to a credential the
 * origin refused or never answered (unless auth.token verified it here), whatever the
 * hook says: the hook can only narrow that down (by age). On 0 *serve holds the answer;
 * on an error *serve is false.
 */
int policy_on_upstream_failure(struct policy_engine *pe, const struct policy_request *req,
                               const struct policy_outage *known, bool *serve);
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

/* ---- for the busted module (lua/module/), which drives the engine from specs ---------------- */

struct lua_State;
struct policy_settings;

/*
 * As policy_engine_new, with the settings given (lua/policy_settings.h; taken: freed by
 * the engine, also when this fails) instead of a config, and, when files is not NULL,
 * exactly those drop-in files in that order instead of the files of settings->policydir
 * (which still serves require).
 */
int policy_engine_new_custom(struct policy_settings *settings, const char *builtin_dir,
                             const char *const *files, size_t n_files, struct policy_engine **out,
                             char *err, size_t errlen);

/*
 * Calls the hook named `hook` as the cache calls hooks (the same sandbox, budget,
 * deadline, memory cap, failure counting and logging): push(L, ud) pushes its arguments
 * and returns how many; take(L, nresults, ud) finds the results on top of the stack and
 * may raise policy_vm_bad_return (lua/policy_vm.h). Returns 0, or a negative error with
 * the message in msg: -EINVAL for a name that is no hook, -ENOENT when no policy defines
 * it, else as a hook call (above).
 */
int policy_call_named(struct policy_engine *pe, const char *hook,
                      int (*push)(struct lua_State *L, void *ud),
                      void (*take)(struct lua_State *L, int nresults, void *ud), void *ud,
                      char *msg, size_t msglen);

#endif
