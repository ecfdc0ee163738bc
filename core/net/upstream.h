/*
 * upstream.h: the HTTP/1.1 client that talks to upstreams (origin registries and caches
 * above us in a chain).
 *
 * One pool per loop keeps idle keep-alive connections per (scheme, host, port). A
 * request is sent on an idle connection when there is one, else on a new connection
 * (connect timeout). The response is parsed with llhttp; its body is handed over as it
 * arrives, and the consumer paces it with upstream_pause/upstream_resume (the socket
 * is not read while paused). A request that makes no progress (no byte in either
 * direction while not paused) for io_timeout_ms fails with UV_ETIMEDOUT, and so does one
 * whose final response head has not come head_timeout_ms after the request was sent
 * (bytes that trickle in, interim responses, do not stretch it). More than
 * UPSTREAM_MAX_INTERIM interim (1xx) responses fail it with UV_EPROTO.
 *
 * https needs the pool's TLS config (a tls.h client config): the server's certificate
 * must chain to a trusted CA and name the URL's host (a DNS name is also sent as SNI;
 * an IP literal must be an iPAddress SAN). The handshake counts against the connect
 * timeout (once more, after the TCP connect). A TLS failure fails the request with
 * UV_EPROTO and a message naming the host and the reason ("TLS to 10.0.0.5:443:
 * certificate signed by unknown authority"); there is never a fallback to http.
 *
 * Redirects (301, 302, 303, 307, 308 with a Location) are followed up to
 * max_redirects times, GET/HEAD only; headers marked `sensitive` (Authorization) are
 * sent only to the scheme, host and port of the original URL, never after a redirect
 * to another one (https to http is followed, as another origin). A connection goes
 * back to the pool only when its response was read to the end and both sides allow
 * keep-alive.
 *
 * A pooled connection that turns out to be dead (closed by the server while idle)
 * before any byte of the response came is retried once on a new connection (GET and
 * HEAD only). Any other request (a push, a DELETE) goes on a new connection, as it
 * cannot be sent twice. A host name is resolved with uv_getaddrinfo and its addresses
 * are tried in order; a numeric address is used as is.
 *
 * A request body (spec.has_body) is given by the caller piece by piece with
 * upstream_send_body and ended with upstream_end_body, sent with its Content-Length or
 * chunked, with backpressure: one piece at a time, each copied, the next asked for when
 * the last is written. The response is read meanwhile, so a server that answers before
 * the body's end (a refusal) is heard: that answer is the response, also when writing
 * the rest of the body then fails (the request fails only when the connection ends
 * without a response). The final head is
 * due head_timeout_ms after the body's end; while the body goes out, io_timeout_ms
 * without a piece written fails the request as any stall does. A request with a body
 * is never redirected or retried.
 *
 * Errors are negative libuv codes (UV_ECONNREFUSED, UV_ETIMEDOUT, UV_EPROTO for a
 * response that is not HTTP or a TLS failure, UV_E2BIG for headers past 64 KiB or
 * more than 100 headers, UV_ELOOP for too many redirects, UV_ECONNRESET for a
 * connection closed before the response was complete, e.g. a body shorter than its
 * Content-Length, UV_ENOTSUP for an https URL when the pool has no TLS config). A
 * function that returns an error never calls a callback, and no function calls one
 * before it returns: every callback comes from the loop.
 *
 * Everything runs on the loop's thread. The process must ignore SIGPIPE (main.c does),
 * as a write to an upstream that has gone away raises it.
 */
#ifndef CC_UPSTREAM_H
#define CC_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/http_types.h"

struct tls_config;
struct upstream_pool;
struct upstream_req;

/* A field left 0 takes its default. */
#define UPSTREAM_DEFAULT_CONNECT_MS 10000 /* resolving, connecting, the TLS handshake */
#define UPSTREAM_DEFAULT_IO_MS 30000      /* no progress for this long fails a request */
#define UPSTREAM_DEFAULT_HEAD_MS 60000    /* the final response head must come within this */
/* Interim (1xx) responses allowed before the final one: more fail the request. */
#define UPSTREAM_MAX_INTERIM 8

struct upstream_pool_opts {
    unsigned connect_timeout_ms; /* 0: UPSTREAM_DEFAULT_CONNECT_MS */
    unsigned io_timeout_ms;      /* 0: UPSTREAM_DEFAULT_IO_MS */
    unsigned head_timeout_ms;    /* 0: UPSTREAM_DEFAULT_HEAD_MS: from the request sent to its
                                    final response head, whatever trickles in meanwhile */
    unsigned idle_timeout_ms;    /* default 30000: an idle pooled connection is closed */
    unsigned max_idle_per_host;  /* default 16 */
    struct tls_config *tls;      /* client config for https (the pool takes its own
                                    reference); NULL: https fails with UV_ENOTSUP */
};

/* An extra request header. Both strings are copied by upstream_request. */
struct upstream_header {
    const char *name;
    const char *value;
    bool sensitive; /* dropped when a redirect leaves the original origin */
};

/*
 * Host is written from the URL and may not be given, nor may Content-Length or
 * Transfer-Encoding (written from has_body and body_length; POST, PUT and PATCH
 * without a body say "Content-Length: 0"); User-Agent is "content-cache/<version>"
 * unless given. A header value may not hold CR or LF. A "Connection: close" header
 * keeps the connection out of the pool.
 */
struct upstream_request_spec {
    const char *method; /* "GET" or "HEAD" (another token: sent, never
                           redirected nor retried) */
    const char *url;    /* absolute: http://host:port/path?query (a
                           #fragment is not sent) */
    const struct upstream_header *headers;
    size_t n_headers;
    int max_redirects;   /* 0: a redirect is the response */
    bool has_body;       /* a body follows, by upstream_send_body */
    int64_t body_length; /* its length (Content-Length), or -1: chunked */
};

/* A piece of a request body was written (status 0), from the loop. */
typedef void (*upstream_body_cb)(void *arg, int status);

struct upstream_callbacks {
    /*
     * The final response's status line and headers (after redirects). The header
     * spans are valid only during the call. content_length is -1 when the response
     * has none (chunked or close-delimited). Not called when the request fails first.
     */
    void (*on_head)(void *ud, int status, const struct http_header *hdrs, size_t n_hdrs,
                    int64_t content_length);
    /*
     * A piece of the body (a slice of one read), valid only during the call. Never
     * called for HEAD. upstream_pause from here stops the flow before the next piece.
     */
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
 * Requests in flight must have finished or been cancelled first (one that has not
 * still runs to its end, its connection is then closed, and the pool is freed after
 * it). upstream_request on a closed pool returns UV_EINVAL. Safe from on_done.
 */
void upstream_pool_close(struct upstream_pool *pool);

/*
 * Starts a request. Copies everything in spec. Returns 0 and the handle in *out (which
 * stays valid until on_done returns or upstream_cancel is called), or a negative error
 * (UV_EINVAL for a URL that does not parse or a bad method or header, UV_ENOTSUP for
 * https on a pool without a TLS config, UV_ENOMEM, or the error of starting the
 * connection).
 */
int upstream_request(struct upstream_pool *pool, const struct upstream_request_spec *spec,
                     const struct upstream_callbacks *cbs, void *ud, struct upstream_req **out);

/*
 * Gives the next piece of the request body: data[0..len) is copied (len > 0), and sent
 * once the request's head has gone out; cb(arg, 0) comes from the loop when it is
 * written: only then may the next piece be given. No callback comes once on_done has
 * been called or the request cancelled. Returns 0, UV_EINVAL (no body was announced,
 * a piece is still pending, the end was given, more than body_length), UV_ENOMEM, or
 * UV_ECANCELED (the request has ended); then cb is not called.
 */
int upstream_send_body(struct upstream_req *req, const char *data, size_t len, upstream_body_cb cb,
                       void *arg);

/*
 * The body is complete: a chunked body gets its last chunk (after the pending piece);
 * with a length, every byte must have been given (UV_EINVAL otherwise). The final
 * response head is due head_timeout_ms from now. Returns 0, UV_EINVAL or UV_ECANCELED.
 */
int upstream_end_body(struct upstream_req *req);

/*
 * Stop reading the socket (backpressure) / start again. Idempotent; no-ops on NULL or
 * after the end. May be called at any time, also before the response starts. While
 * paused, no on_head or on_body comes, on_done of a response that is complete waits
 * for the resume (a failure such as a connect timeout is still reported), and the io
 * timeout does not run. Bytes already read when the pause came are delivered after the
 * resume, from the loop: upstream_resume itself never calls a callback.
 */
void upstream_pause(struct upstream_req *req);
void upstream_resume(struct upstream_req *req);

/*
 * Abandons the request: no callback is called after this; the connection is closed.
 * Safe from inside on_head and on_body; a no-op on NULL and from inside on_done.
 */
void upstream_cancel(struct upstream_req *req);

/*
 * A human sentence for the last failure, naming the host and what went wrong
 * ("connect to 127.0.0.1:5001: connection refused"), valid until on_done returns.
 * URLs in it are shown without their query (which may hold a signature). "" when
 * nothing failed.
 */
const char *upstream_error_message(const struct upstream_req *req);

/* The URL that produced the final response (after redirects), valid until on_done returns. */
const char *upstream_final_url(const struct upstream_req *req);

#endif
