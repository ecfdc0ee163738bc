/*
 * debug.h: the debug server on http.debug.addr, as Docker Registry has one:
 *
 *   GET /metrics        Prometheus text format (version 0.0.4)
 *   GET /debug/health   200 while the storage root is writable and an upstream answered
 *                       in the last minute (asked now when none did), else 503 with the
 *                       reasons; a small JSON body either way
 *
 * The request counters are fed by debug_observe (one call per access-log entry); every
 * other figure is read at scrape time from the module that keeps it.
 */
#ifndef CC_DEBUG_H
#define CC_DEBUG_H

#include <stddef.h>
#include <uv.h>

#include "base/log.h"

struct auth_cache;
struct blob_service;
struct budget;
struct expiry;
struct fetch_manager;
struct http_server;
struct policy_engine;
struct proxy;
struct store;

/* Where the figures come from. Pointers may be NULL (that part is left out); they are
 * read at each scrape, so a module may be set up after debug_start. */
struct debug_sources {
    struct fetch_manager *fetches;
    struct expiry *expiry;
    struct budget *budget;
    struct blob_service *blobs;
    struct auth_cache *auth;
    struct policy_engine *policy;
    struct http_server *server;
    struct store *store;
    struct proxy *proxy;
};

struct debug;

/*
 * Starts the debug server on addr. src must outlive it. Returns 0, or a negative
 * error with a sentence in err.
 */
int debug_start(uv_loop_t *loop, const char *addr, struct debug_sources *src, struct debug **out,
                char *err, size_t errlen);
void debug_stop(struct debug *d);
/* The bound address, "ip:port". */
const char *debug_address(const struct debug *d);

/* Counts one finished request (from the access-log entry). d may be NULL: then the
 * counts are kept all the same, for a debug server started later. */
void debug_observe(const struct log_access_entry *e);

/* Renders the metrics into buf; returns the length (cut at len - 1). */
size_t debug_render_metrics(const struct debug_sources *src, char *buf, size_t len);

#endif
