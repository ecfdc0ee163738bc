/*
 * server.h: the HTTP/1.1 listener and its connections (libuv + llhttp).
 *
 * A connection parses one request at a time. When a request's headers are complete
 * (and, for a request without a body, the request is complete) the server hands the
 * request to the handler as an exchange, keeps reading up to 64 KiB of pipelined input
 * while the exchange runs (and stops reading past that), and parses that input only
 * after the exchange has ended, so responses leave in order and a client cannot queue
 * unbounded work. A request that carries a body (a push) is handed over when its headers
 * are complete; the handler reads the body with http_req_body_start, paced with
 * http_req_body_pause/resume (at most 64 KiB of it is held while paused, then the socket
 * is not read: backpressure to the client), or leaves it unread: then the connection is
 * closed once the exchange ends, as it is when the handler ends the exchange before the
 * body's end.
 *
 * Limits: request line plus headers at most max_header_bytes and max_headers (431
 * beyond), header_timeout_ms for a request's headers to arrive (408 and close),
 * idle_timeout_ms between requests and without a byte of a body being read (close),
 * write_timeout_ms without write progress, at most
 * max_connections at once (over every server that shares the `connections` counter: the
 * loops of one process) and, for https, at most max_pending_handshakes whose handshake
 * is not done (more are closed at accept). An idle connection holds no buffer: reads go
 * through one loop-wide buffer.
 *
 * https: a failed handshake sends its alert before the connection closes; failures are
 * logged at most once per 10 s, with how many there were (so are refused connections).
 *
 * Exchange lifetime: the handler must end every exchange it is given with exactly one
 * call to http_respond_end or http_respond_abort, also after the client has gone (the
 * gone callback tells it so). The exchange's memory belongs to the server and is
 * released after that call; the handler must not touch it afterwards.
 */
#ifndef CC_SERVER_H
#define CC_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/http_types.h"
#include "base/metrics.h"
#include "base/log.h"

struct http_server;
struct http_exchange;

typedef void (*http_request_cb)(struct http_exchange *x, void *ud);
typedef void (*http_write_cb)(struct http_exchange *x, int status, void *arg);
typedef void (*http_gone_cb)(struct http_exchange *x, void *arg);

/* How the handler is given a request body (http_req_body_start). */
struct http_body_callbacks {
    /* A piece of the body, valid only during the call. http_req_body_pause from here
     * stops the flow before the next piece; so does ending the exchange. */
    void (*on_data)(struct http_exchange *x, const char *data, size_t len, void *arg);
    /* The whole body has arrived (called once, after the last on_data; may be NULL). A
     * body that cannot arrive (the client went, a malformed chunk, no byte of it for
     * idle_timeout_ms) closes the connection: the gone callback says so instead. */
    void (*on_end)(struct http_exchange *x, void *arg);
};

struct http_server_opts {
    size_t max_header_bytes;         /* default 16384 */
    size_t max_headers;              /* default 100 */
    unsigned header_timeout_ms;      /* default 10000 */
    unsigned idle_timeout_ms;        /* default 60000 */
    unsigned write_timeout_ms;       /* default 60000 */
    unsigned max_connections;        /* default 16384 */
    unsigned max_pending_handshakes; /* https: default 1024 connections whose TLS handshake
                                        is not done yet (~35 KiB each), counted over the
                                        whole process (the servers of several loops share
                                        the bound); more are closed at accept */
    /* The count that max_connections bounds: NULL, this server's own connections; else
     * a counter the caller owns (zero at first, outliving the server) that several
     * servers share, so the bound is theirs together (the loops of one process). Each
     * server adds its connections when it accepts them and takes them off when they are
     * freed, atomically: any thread may share it. */
    atomic_uint *connections;
    /* Headers added to every response (config http.headers); copied. */
    const struct http_header *extra_headers;
    size_t n_extra_headers;
    http_request_cb on_request;
    void *ud;
    /* https: a server config of tls.h (the server takes its own reference); NULL: http. */
    struct tls_config *tls;
    /* Called with every finished exchange's facts (metrics), may be NULL. */
    void (*on_complete)(void *ud, const struct log_access_entry *e);
    /* Formats the access-log line of an exchange (NULL: log_format_access). */
    size_t (*format_access)(void *ud, const struct log_access_entry *e, char *buf, size_t cap);
    void *format_ud;
    /* Several loops of one process listen on one address (workers): each listener sets
     * SO_REUSEPORT and the kernel spreads connections over them. Any other socket that
     * sets it too (same user) could join the address: off with workers: 1. */
    bool reuseport;
};

/*
 * Binds and listens on `addr` ("host:port", ":port", "[v6]:port"). Returns 0 and the
 * server in *out, or a negative libuv error with a sentence in err.
 */
int http_server_listen(uv_loop_t *loop, const char *addr, const struct http_server_opts *opts,
                       struct http_server **out, char *err, size_t errlen);

/* The bound address as "ip:port" (useful with port 0). */
const char *http_server_address(const struct http_server *srv);

/*
 * Graceful stop: closes the listener and idle connections; connections with an
 * exchange finish it and then close. After timeout_ms (0: at once) whatever is left is
 * closed. `done` is called once every connection and the listener are closed; the
 * server is freed after it returns.
 */
void http_server_shutdown(struct http_server *srv, unsigned timeout_ms, void (*done)(void *arg),
                          void *arg);

/* Connections open now (this server's). */
unsigned http_server_connections(const struct http_server *srv);
/* Exchanges this server has ended (answered, or cut short), since it listened. */
uint64_t http_server_requests(const struct http_server *srv);

/* A metrics_render_fn over a struct http_server: the connections open now. */
void http_server_render_metrics(const void *srv, struct textbuf *out);

/* --- The request ------------------------------------------------------------- */

const char *http_req_method(const struct http_exchange *x); /* "GET", "HEAD", ... */
bool http_req_is_head(const struct http_exchange *x);
bool http_req_is_get(const struct http_exchange *x);
/* True for HTTP/1.1 clients: a response of unknown length is chunked, so its end is
 * marked. An HTTP/1.0 client's ends with the connection, and a body that broke off
 * looks whole to it. */
bool http_req_can_chunk(const struct http_exchange *x);
/* The path (before '?'), as sent; not NUL-terminated: use the length. */
const char *http_req_path(const struct http_exchange *x, size_t *len);
/* The query after '?' without it, or NULL. */
const char *http_req_query(const struct http_exchange *x, size_t *len);
/* The whole request target as sent, NUL-terminated. */
const char *http_req_target(const struct http_exchange *x);
void http_req_headers(const struct http_exchange *x, const struct http_header **hdrs, size_t *n);
/* The first header named `name`, or NULL; the value is not NUL-terminated. */
const struct http_header *http_req_header(const struct http_exchange *x, const char *name);
const char *http_req_remote_addr(const struct http_exchange *x);
/* True when the request carries a body (Content-Length > 0 or chunked). */
bool http_req_has_body(const struct http_exchange *x);
/* The body's length from Content-Length, -1 when it is chunked, 0 when there is none. */
int64_t http_req_body_length(const struct http_exchange *x);

/*
 * Starts reading the request body: its pieces and its end come to cbs, with arg, from
 * the loop (never from inside this call), bytes the server already holds first. A client
 * that sent "Expect: 100-continue" is told to go on. Returns 0, UV_EINVAL (no body, a
 * second call, the exchange has ended, no on_data) or UV_ECANCELED (the client is gone).
 */
int http_req_body_start(struct http_exchange *x, const struct http_body_callbacks *cbs, void *arg);
/* Stops handing over body pieces / goes on (from the loop). Idempotent; no-ops before
 * http_req_body_start. While paused, no timeout runs on the body. */
void http_req_body_pause(struct http_exchange *x);
void http_req_body_resume(struct http_exchange *x);
/* True once the whole body has been read (on_end has been or is being called). */
bool http_req_body_done(const struct http_exchange *x);
uint64_t http_req_start_ns(const struct http_exchange *x);
uv_loop_t *http_req_loop(const struct http_exchange *x);

/* --- The response ------------------------------------------------------------ */

/*
 * Sets the status and headers. content_length >= 0 is sent as Content-Length (for
 * HEAD too, with no body); -1 means an unknown length (chunked for HTTP/1.1, close
 * for 1.0). The headers are copied and sent together with the first body bytes or at
 * the end. Returns 0 or UV_EINVAL when called twice.
 */
int http_respond_head(struct http_exchange *x, int status, const struct http_header *hdrs,
                      size_t n_hdrs, int64_t content_length);

/*
 * Queues body bytes owned by the caller; `buf` must stay valid until `cb` runs, which
 * happens exactly once, from the loop, after the bytes were handed to the kernel
 * (status 0) or the connection failed (negative). One write at a time: call again only
 * after cb. Returns 0, or a negative error (the client is gone: UV_ECANCELED; a HEAD
 * request: UV_EINVAL; a write already pending: UV_EBUSY) and then cb is not called.
 */
int http_respond_body(struct http_exchange *x, const char *buf, size_t len, http_write_cb cb,
                      void *arg);

/*
 * Writes as much of data as the socket takes now, without a callback. Returns the
 * number of bytes taken (possibly 0), or a negative error. Used to pass small bodies
 * through without a copy; what is left goes through http_respond_body.
 */
int http_respond_try(struct http_exchange *x, const char *data, size_t len);

/*
 * Ends the response normally. With a known Content-Length every byte must have been
 * sent, else the connection is closed (the client sees a short body, never a wrong
 * one). Writes the access-log line.
 */
void http_respond_end(struct http_exchange *x);

/* Adds a header to the response (before http_respond_head; copied). */
void http_respond_add_header(struct http_exchange *x, const char *name, const char *value);

/*
 * A whole small response at once: status, headers and body (copied) go out in one
 * write, and the exchange ends. Returns 0 or a negative error (the exchange is then
 * still the caller's to end).
 */
int http_respond_full(struct http_exchange *x, int status, const struct http_header *hdrs,
                      size_t n_hdrs, const char *body, size_t len);

/* Ends the exchange by closing the connection (a body that cannot be completed). */
void http_respond_abort(struct http_exchange *x);

/* Sets the callback for "the client went away". */
void http_exchange_on_gone(struct http_exchange *x, http_gone_cb cb, void *arg);
bool http_exchange_client_gone(const struct http_exchange *x);
bool http_exchange_head_sent(const struct http_exchange *x);

/* --- What the access log says about this exchange --------------------------- */

/*
 * How the cache served the request, for the line's cache= field ("hit", "miss",
 * "coalesced", "bypass"): a string with static storage, kept as a pointer.
 */
void http_log_set_cache(struct http_exchange *x, const char *result);
/* Served from what the cache held while every upstream failed: stale=true and the age in
 * whole seconds of the oldest fact the answer relied on. */
void http_log_set_stale(struct http_exchange *x, uint64_t age_s);
/* The upstream that answered (copied; a base URL, never with credentials). */
void http_log_set_upstream(struct http_exchange *x, const char *upstream);
/* The repository and digest the request was about (copied). */
void http_log_set_target(struct http_exchange *x, const char *repo, size_t repo_len,
                         const char *digest, size_t digest_len);
/* The repository set by http_log_set_target (NULL when none). */
const char *http_log_repo(const struct http_exchange *x, size_t *len);

/* The URI the access line (and the handlers' diagnostics) show instead of the request
 * target, e.g. with a credential in its query redacted (copied). */
void http_log_set_uri(struct http_exchange *x, const char *uri);
/* That URI, or the request target when none was set. */
const char *http_log_uri(const struct http_exchange *x);

/* A short reason for an error response, logged with the line (copied). */
void http_log_set_error(struct http_exchange *x, const char *error);

#endif
