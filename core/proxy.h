/*
 * proxy.h: the request handler. It routes each exchange of the pull API (registry.h),
 * refuses what the cache does not do, and relays the rest to an upstream (upstream.h),
 * streaming the body back with backpressure.
 *
 * Upstream choice: the upstreamhosts of the first upstreams entry, in order, then its
 * originhost; the next one is tried when a host cannot be reached or answers 5xx
 * before any byte has gone to the client.
 */
#ifndef CC_PROXY_H
#define CC_PROXY_H

#include <uv.h>

#include "config.h"
#include "server.h"
#include "upstream.h"

struct proxy;

/* Creates the handler. cfg and pool must outlive it. Returns NULL on allocation failure. */
struct proxy *proxy_new(uv_loop_t *loop, const struct config *cfg, struct upstream_pool *pool);

/* The server's request callback: pass proxy_handle with the proxy as ud. */
void proxy_handle(struct http_exchange *x, void *proxy);

/* Requests still in flight (for a drain). */
unsigned proxy_in_flight(const struct proxy *p);

/* Frees the handler; no exchange may be in flight. */
void proxy_free(struct proxy *p);

/*
 * Answers x with a registry error body (and an Allow header for UNSUPPORTED), then ends
 * it. message and detail are copied into the body.
 */
void proxy_respond_error(struct http_exchange *x, int code, const char *message,
                         const char *detail);

#endif
