/*
 * proxy.h: the request handler. It routes each exchange of the pull API (registry.h),
 * refuses what the cache does not do, and relays the rest to an upstream (upstream.h),
 * streaming the body back with backpressure.
 *
 * Blob requests go to the blob service (blob.h) once one is set.
 *
 * Upstream choice: the upstreamhosts of the first upstreams entry in round-robin order,
 * then its originhost (proxy_select); the next one is tried when a host cannot be
 * reached or answers 5xx before any byte has gone to the client (chain.h).
 */
#ifndef CC_PROXY_H
#define CC_PROXY_H

#include <uv.h>

#include "base/config.h"
#include "lua/policy.h"
#include "registry/registry.h"
#include "net/server.h"
#include "net/upstream.h"

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
                              const struct http_header *extra, size_t n_extra, const char *message,
                              const char *detail);

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

/* What the policies are told about a request: a policy_request and its strings. */
struct proxy_req_info {
    struct policy_request req;
    size_t entry; /* the upstreams entry serving it */
    char repository[256];
    char reference[160];
};
void proxy_req_info_init(struct proxy_req_info *ri, const struct http_exchange *x,
                         const struct registry_route *route, size_t entry);

/*
 * The upstreams entry a request is for: the one whose originhost is the registry named
 * by the `ns` query parameter (host[:port], as containerd sends it to a mirror), or the
 * first without one. -1 when ns names none of them. The decoded ns goes to ns (""
 * when absent).
 */
int proxy_entry_for(const struct proxy *p, const struct http_exchange *x, char *ns, size_t ns_len);

/*
 * The base URLs to try for one client request of upstreams entry `entry`, in order: what the
 * select_upstream policy answers (each URL mapped to the configured upstream it names), or the
 * built-in order when no policy is set or it fails: the upstreamhosts in round-robin order, the
 * cursor advanced once per call, then the originhost. Call it once per client request
 * and use the list for every upstream request made for it (a blob's authorization HEAD
 * and its fetch go to the same place). The array is valid until the next call.
 */
const char *const *proxy_select(struct proxy *p, const struct policy_request *req, size_t entry,
                                size_t *n);

struct policy_engine;
/* Upstream selection asks this engine's select_upstream from now on (NULL: built-in). */
void proxy_set_policy(struct proxy *p, struct policy_engine *pe);

struct upstream_pool *proxy_pool(const struct proxy *p);

#endif
