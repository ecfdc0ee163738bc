/*
 * proxy.h: the request handler. It routes each exchange of the pull API (registry.h),
 * refuses what the cache does not do, and relays the rest to an upstream (upstream.h),
 * streaming the body back with backpressure.
 *
 * Blob requests go to the blob service (blob.h) once one is set.
 *
 * Upstream choice: the upstreamhosts of the first upstreams entry in round-robin order,
 * then its originhost (proxy_bases); the next one is tried when a host cannot be
 * reached or answers 5xx before any byte has gone to the client (chain.h).
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

/* The same with extra headers and, when status > 0, another status than the code's. */
void proxy_respond_error_with(struct http_exchange *x, int code, int status,
                              const struct http_header *extra, size_t n_extra,
                              const char *message, const char *detail);

struct blob_service;
/* Blob GET/HEAD of sha256 digests go to bs (see blob.h) from now on. */
void proxy_set_blob_service(struct proxy *p, struct blob_service *bs);

/*
 * Copies the request headers that go upstream with a request made for x: Authorization
 * (marked sensitive), every Accept, and with_conditionals also Range, If-None-Match,
 * If-Modified-Since, If-Range. Values are NUL-terminated copies in scratch. Returns how
 * many were written to out (at most max).
 */
size_t proxy_forward_headers(const struct http_exchange *x, bool with_conditionals,
                             struct upstream_header *out, size_t max, char *scratch,
                             size_t scratch_len);

/*
 * The base URLs to try for one upstream request, in order: the upstreamhosts in
 * round-robin order, then the originhost. `advance` moves the round-robin cursor on
 * (once per blob fetch, so that fetches alternate between the upstream caches while
 * the authorization HEAD of a request goes where its fetch will go). The array is
 * valid until the next call.
 */
const char *const *proxy_bases(struct proxy *p, bool advance, size_t *n);
struct upstream_pool *proxy_pool(const struct proxy *p);

#endif
