/*
 * upstream.h: the HTTP/1.1 client that talks to upstreams (origin registries and caches
 * above us in a chain).
 *
 * One pool per loop keeps idle keep-alive connections per (scheme, host, port). A
 * request is sent on an idle connection when there is one, else on a new connection
 * (connect timeout). The response is parsed with llhttp; its body is handed over as it
 * arrives, and the consumer paces it with upstream_pause/upstream_resume (the socket
 * is not read while paused). A request that makes no progress (no byte in either
 * direction while not paused) for io_timeout_ms fails with UV_ETIMEDOUT.
 *
 * Redirects (301, 302, 303, 307, 308 with a Location) are followed up to
 * max_redirects times, GET/HEAD only; headers marked `sensitive` (Authorization) are
 * sent only to the scheme, host and port of the original URL, never after a redirect
 * to another one. A connection goes back to the pool only when its response was read
 * to the end and both sides allow keep-alive.
 *
 * Errors are negative libuv codes (UV_ECONNREFUSED, UV_ETIMEDOUT, UV_EPROTO for a
 * response that is not HTTP, UV_E2BIG for headers past 64 KiB, UV_ELOOP for too many
 * redirects, UV_ENOTSUP for an https URL while TLS is not built in). A function that
 * returns an error never calls a callback.
 */
#ifndef CC_UPSTREAM_H
#define CC_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "http_types.h"

struct upstream_pool;
struct upstream_req;

struct upstream_pool_opts {
    unsigned connect_timeout_ms;   /* default 10000 */
    unsigned io_timeout_ms;        /* default 30000: no progress for this long fails */
    unsigned idle_timeout_ms;      /* default 30000: an idle pooled connection is closed */
    unsigned max_idle_per_host;    /* default 16 */
};

/* An extra request header. Both strings are copied by upstream_request. */
struct upstream_header {
    const char *name;
    const char *value;
    bool sensitive;                /* dropped when a redirect leaves the original origin */
};

struct upstream_request_spec {
    const char *method;            /* "GET" or "HEAD" */
    const char *url;               /* absolute: http://host:port/path?query */
    const struct upstream_header *headers;
    size_t n_headers;
    int max_redirects;             /* 0: a redirect is the response */
};

struct upstream_callbacks {
    /*
     * The final response's status line and headers (after redirects). The header
     * spans are valid only during the call. content_length is -1 when the response
     * has none (chunked or close-delimited). Not called when the request fails first.
     */
    void (*on_head)(void *ud, int status, const struct http_header *hdrs, size_t n_hdrs,
                    int64_t content_length);
    /* A piece of the body, valid only during the call. Never called for HEAD. */
    void (*on_body)(void *ud, const char *data, size_t len);
    /*
     * Called exactly once, last, unless upstream_cancel came first: 0 when the whole
     * response was received, else a negative libuv error. The request handle is freed
     * after this returns.
     */
    void (*on_done)(void *ud, int err);
};

/* Creates a pool; NULL opts means defaults. Returns NULL on allocation failure. */
struct upstream_pool *upstream_pool_new(uv_loop_t *loop, const struct upstream_pool_opts *opts);

/*
 * Closes every idle connection and frees the pool once their handles are closed.
 * Requests in flight must have finished or been cancelled first.
 */
void upstream_pool_close(struct upstream_pool *pool);

/*
 * Starts a request. Copies everything in spec. Returns 0 and the handle in *out (which
 * stays valid until on_done returns or upstream_cancel is called), or a negative error
 * (UV_EINVAL for a URL that does not parse, UV_ENOTSUP for https without TLS, UV_ENOMEM).
 */
int upstream_request(struct upstream_pool *pool, const struct upstream_request_spec *spec,
                     const struct upstream_callbacks *cbs, void *ud, struct upstream_req **out);

/* Stop reading the socket (backpressure) / start again. Idempotent. */
void upstream_pause(struct upstream_req *req);
void upstream_resume(struct upstream_req *req);

/* Abandons the request: no callback is called after this; the connection is closed. */
void upstream_cancel(struct upstream_req *req);

/*
 * A human sentence for the last failure, naming the host and what went wrong
 * ("connect to 127.0.0.1:5001: connection refused"), valid until on_done returns.
 */
const char *upstream_error_message(const struct upstream_req *req);

/* The URL that produced the final response (after redirects), valid until on_done returns. */
const char *upstream_final_url(const struct upstream_req *req);

#endif
