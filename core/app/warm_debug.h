/*
 * warm_debug.h: warming a running cache from its debug address, so that a deployment
 * pipeline can warm every regional cache without a shell on it:
 *
 *   POST /debug/warm        body {"images": ["name:tag", ...], "platforms": ["linux/amd64"],
 *                           "jobs": 4} ("platforms" and "jobs" optional), at most
 *                           WARM_DEBUG_BODY_MAX bytes; the request's own Authorization
 *                           goes upstream with the warm's requests, as a client's goes
 *                           with its pull (kept in memory for the job, never logged nor
 *                           shown). 202 {"id": "N", "status": "/debug/warm/N"} with a
 *                           Location; 400 (the body, a reference, a platform), 413 (too
 *                           long), 429 (WARM_DEBUG_RUNNING warms run already), 503 (the
 *                           cache is stopping), each with {"error": "..."}.
 *   GET /debug/warm/{id}    200 with the job's progress (warm_status_json), 404 for a job
 *                           not kept (the last WARM_DEBUG_KEPT are).
 *   GET /debug/warm         200 {"jobs": [{"id", "state"}]}.
 *
 * The warm runs on the cache's own store, fetch manager, manifest service and upstreams
 * (warm.h): a client's miss and a warm of the same blob share one fetch. Everything runs
 * on the loop's thread.
 */
#ifndef CC_WARM_DEBUG_H
#define CC_WARM_DEBUG_H

#include "cache/warm.h"
#include "net/server.h"

#define WARM_DEBUG_BODY_MAX (64 * 1024)
#define WARM_DEBUG_KEPT 16
#define WARM_DEBUG_RUNNING 4

struct warm_debug;

/* The env is copied; its objects must outlive the warm_debug. NULL on allocation failure. */
struct warm_debug *warm_debug_new(const struct warm_env *env);
/* An http_request_cb for debug_add_route(d, "/debug/warm", warm_debug_handle, wd). */
void warm_debug_handle(struct http_exchange *x, void *warm_debug);
/* At shutdown, before the fetch manager's fetches are cancelled: every running warm is
 * cancelled, and new ones are refused (503). */
void warm_debug_stop(struct warm_debug *wd);
/* After the loop has ended (every warm has called on_done). NULL is a no-op. */
void warm_debug_free(struct warm_debug *wd);

#endif
