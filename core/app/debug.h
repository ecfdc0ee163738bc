/*
 * debug.h: the debug server on http.debug.addr, as Docker Registry has one:
 *
 *   GET /metrics        Prometheus text format (version 0.0.4): the request counters kept
 *                       here, then every section added with debug_add_section, in order,
 *                       then content_cache_health_ok{check}: the latest answer of each
 *                       health check. Each scrape also starts an evaluation of the checks
 *                       (one at a time), so the gauges move without /debug/health being
 *                       asked; a check that answers later shows from the next scrape.
 *   GET /debug/health   200 when every check added with debug_add_check says healthy,
 *                       else 503; a small JSON body either way, one member per check
 *                       (its name and its sentence), then "status"
 *
 * The debug server knows no module: main.c hands it render callbacks and health checks
 * (metrics.h), and each module renders its own figures; a module with endpoints of its
 * own (POST /debug/warm, warm_debug.h) is handed its path prefix (debug_add_route). The
 * request counters are fed by debug_observe (one call per access-log entry), from any
 * loop. Everything else runs on the loop's thread.
 */
#ifndef CC_DEBUG_H
#define CC_DEBUG_H

#include <stddef.h>
#include <uv.h>

#include "base/log.h"
#include "base/metrics.h"
#include "net/server.h"

struct debug;

/*
 * Starts the debug server on addr. Returns 0, or a negative error with a sentence in
 * err. Sections and checks may be added afterwards.
 */
int debug_start(uv_loop_t *loop, const char *addr, struct debug **out, char *err, size_t errlen);
void debug_stop(struct debug *d);
/* The bound address, "ip:port". */
const char *debug_address(const struct debug *d);

/* Adds a section of /metrics: render(source, out) at each scrape. source must outlive d.
 * Returns 0 or -ENOMEM. */
int debug_add_section(struct debug *d, metrics_render_fn render, const void *source);

/* Adds a health check named `name` (a JSON key, copied): check(source, ...) at each
 * /debug/health, one after the other in the order added. Returns 0 or -ENOMEM. */
int debug_add_check(struct debug *d, const char *name, health_check_fn check, void *source);

/*
 * Hands every request whose path is `prefix` or starts with `prefix` + "/" (any method)
 * to handle(x, ud), which answers it as a server handler does (server.h). For a
 * module's own endpoints (POST /debug/warm). ud must outlive d. 0 or -ENOMEM.
 */
int debug_add_route(struct debug *d, const char *prefix, http_request_cb handle, void *ud);

/*
 * The figures of the process's other loops (workers): at each /metrics scrape,
 * gather(ud, done, arg) is called; it must call done(arg, text, len) exactly once, on
 * d's loop, with the other loops' sections rendered on their own threads (text valid
 * during the call). The answer is then d's own figures with those summed in
 * (metrics_sum_into): one series per name and labels, totals over the loops.
 */
typedef void (*debug_gathered_fn)(void *arg, const char *text, size_t len);
void debug_set_gather(struct debug *d, void (*gather)(void *ud, debug_gathered_fn done, void *arg),
                      void *ud);

/* Counts one finished request (from the access-log entry). Kept process-wide (every
 * loop counts into the same figures, under a mutex), whether or not a debug server
 * runs. */
void debug_observe(const struct log_access_entry *e);

/* Renders the metrics (the request counters and d's sections) into buf; returns the
 * length (cut at len - 1). d may be NULL: the request counters only. */
size_t debug_render_metrics(const struct debug *d, char *buf, size_t len);

#endif
