/*
 * server.c: the HTTP/1.1 listener and its connections. See server.h for the contract.
 *
 * Life of a connection: accept -> read (header timer) -> llhttp parses into the
 * connection's request buffer -> at the end of the request (or of its headers when it
 * has a body) the parser is paused, unparsed bytes are kept, and the exchange goes to
 * the handler -> the handler writes the response -> when it ends, the exchange is
 * logged and freed, and the kept bytes are parsed (from the idle handler, never from
 * inside the handler's own call) or the connection waits for more.
 *
 * A request body flows only once the handler asks for it (http_req_body_start): then
 * the kept bytes (from the idle handler) and what the socket brings go through the
 * parser, whose on_body hands them to the handler, until it pauses (the rest is kept
 * again, at most HELD_INPUT_MAX, and reading stops past that), ends the exchange, or
 * the body ends (what follows it is kept, unparsed, as after any request). A body the
 * handler does not read in full closes the connection after the response.
 *
 * The socket stays readable across requests (stopping and starting a read costs an
 * epoll_ctl each, per request): input that arrives while an exchange is answered, or
 * while kept bytes wait for the idle handler, is appended to the kept bytes, unparsed.
 * Reading stops only when HELD_INPUT_MAX bytes are kept, or when the exchange closes
 * the connection (a request with a body, Connection: close, a drain), and starts again
 * once the kept bytes are parsed. A client's EOF in that time waits until the requests
 * before it are answered, as it would have in the socket; a read error closes at once.
 * On https the same holds for the plaintext: the session decrypts into the kept bytes.
 */
#include "net/server.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <inttypes.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "base/bytes.h"
#include "base/log.h"
#include "net/tls_stream.h"

enum timer_mode { TIMER_NONE, TIMER_HEADER, TIMER_IDLE, TIMER_WRITE, TIMER_BODY, TIMER_LINGER };

/*
 * A connection closed after a response while its request's body was still coming (the
 * handler refused it unread) first reads and drops what the client sends for up to
 * LINGER_MS or LINGER_MAX bytes, or until it closes: closing with unread input would
 * reset the connection, and the client could lose the response it has not read yet.
 */
#define LINGER_MS 2000
#define LINGER_MAX (4u << 20)

/*
 * The most input a connection holds unparsed while it answers a request: the client's
 * next requests, pipelined. Past it reading stops, and a client that sends without
 * reading its responses waits in TCP's flow control. 64 KiB is one read's worth (the
 * loop's read buffer) and four requests at the default header limit (16 KiB); a larger
 * request is held in part and parsed on when reading starts again.
 */
#define HELD_INPUT_MAX (64 * 1024)

struct conn;

struct http_exchange {
    struct conn *conn;
    /* The request: everything points into reqbuf. */
    char *reqbuf;
    struct http_header *hdrs;
    size_t n_hdrs;
    char *target; /* NUL-terminated copy of the request target */
    size_t path_len;
    const char *query;
    size_t query_len;
    uint8_t method;
    uint8_t http_minor;
    bool keep_alive;
    bool has_body;
    uint64_t start_ns;
    /* The request body (has_body): read once the handler starts it. */
    int64_t body_length; /* Content-Length, or -1 when chunked */
    bool body_started, body_paused, body_done, body_end_told;
    struct http_body_callbacks body_cbs;
    void *body_arg;
    /* The response. */
    int status;
    char *head;
    size_t head_len;
    bool head_set;
    bool head_sent;
    int64_t content_length;
    bool chunked;
    bool close_delimited;
    bool close_after;
    uint64_t body_sent;
    uv_write_t wreq;
    bool write_pending;
    bool internal_write; /* the pending write is the final one, issued by end */
    http_write_cb wcb;
    void *warg;
    char chunk_hdr[24];
    bool abort_requested;
    bool in_callback;     /* inside the write callback: finishing waits for its end */
    bool finish_deferred; /* finish when the pending write or callback is over */
    bool ended;           /* the handler is done with it */
    bool gone;
    http_gone_cb gone_cb;
    void *gone_arg;
    /* The access log. */
    const char *cache; /* static: "hit", "miss", ... or NULL */
    bool stale;        /* served from what was held, every upstream failing */
    uint64_t stale_age_s;
    char *log_upstream;
    char *log_repo;
    char *log_digest;
    char *log_error;
    char *log_uri;    /* shown instead of target (a credential redacted), or NULL */
    char *extra_head; /* "Name: value\r\n" lines added by http_respond_add_header */
};

/* A request being parsed: its bytes and header offsets. */
struct reqparse {
    char *buf;
    size_t len, cap;
    struct {
        uint32_t name_off, name_len, value_off, value_len;
    } * hdrs;
    size_t n_hdrs, hdr_cap;
    size_t url_len;
    int last; /* 0 nothing, 1 url, 2 field, 3 value */
    bool too_large;
};

/*
 * A log line that clients can cause is written at most once per THROTTLE_NS; the events
 * in between are counted and the next line says how many there were.
 */
#define THROTTLE_NS (10ull * 1000000000ull)
struct throttle {
    uint64_t last_ns;
    unsigned count; /* events since the last line, this one included */
};

/* Counts an event; true when a line should be written now (then *count is how many
 * events it speaks for, and the count starts over). */
static bool throttle_event(struct throttle *t, uint64_t now, unsigned *count)
{
    t->count++;
    if (t->last_ns != 0 && now - t->last_ns < THROTTLE_NS) return false;
    t->last_ns = now;
    *count = t->count;
    t->count = 0;
    return true;
}

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    llhttp_t parser;
    struct http_server *srv;
    struct conn *prev, *next; /* the server's list */
    struct conn *ready_next;  /* the server's list of connections with kept input */
    bool on_ready_list;
    struct reqparse *rp;          /* NULL between requests */
    struct http_exchange *active; /* the exchange being answered */
    struct http_exchange *parsed; /* set by the parser callbacks, dispatched after execute */
    char *kept;                   /* unparsed input held while an exchange runs; NULL when none */
    size_t kept_len, kept_cap;
    enum timer_mode timer_mode;
    bool reading;
    bool read_eof;  /* the client ended its side while input was held: close when answered */
    bool lingering; /* answered and closing: input is read and dropped (LINGER_MS) */
    size_t lingered;
    bool closing;
    bool tcp_closed;
    bool timer_closed;
    int parse_error_status; /* 431 when a limit was passed in a callback */
    char remote[64];
    /* https: the session on the socket (tls_stream.h), when https is set. */
    struct tls_stream tls;
    bool https;
    bool handshaking; /* counted in pending_handshakes */
};

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_idle_t idle;
    uv_timer_t shutdown_timer;
    struct http_server_opts opts;
    llhttp_settings_t settings;
    char *extra_headers; /* preformatted "Name: value\r\n" lines */
    size_t extra_len;
    char address[80];
    unsigned n_conns;         /* this server's connections (closing ones included) */
    atomic_uint own_conns;    /* what max_connections bounds without opts.connections */
    atomic_uint *bound_conns; /* opts.connections, or &own_conns */
    uint64_t requests;        /* exchanges ended (access-logged) */
    struct conn *conns;
    struct conn *ready_head;
    bool shutting_down;
    bool handles_closing;
    int handles_open; /* listener, idle, shutdown timer: the server is freed at 0 */
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
    struct tls_config *tls; /* https when set */
    char readbuf[64 * 1024];
    char date[40];
    time_t date_sec;
    uint64_t nofile;            /* RLIMIT_NOFILE when listening began; 0 when unlimited */
    struct throttle fd_warn;    /* "open files near the limit" */
    struct throttle refused;    /* connections closed at accept (limits, shutdown) */
    struct throttle tls_failed; /* failed TLS handshakes and sessions */
    /* With reuseport, at the fd limit the listener is closed for a while (other loops'
     * listeners take the address meanwhile) and opened again: see accept_pause. */
    struct sockaddr_storage bound_addr;
    int listen_spare;      /* a duplicate of the listening socket (reuseport), or -1: it
                              stays listening, its queue kept, while the listener pauses */
    bool listener_paused;  /* closed on purpose: shutdown need not close it */
    bool listener_closing; /* its close has not completed yet */
};

/* https connections whose handshake is not done, in the whole process: the loops of one
 * process (workers) each have a server on the same address, and the bound on pending
 * handshakes (their sessions' memory) is the process's. */
static atomic_uint pending_handshakes;

static void conn_close(struct conn *c);
static void conn_continue(struct conn *c);
static void conn_feed(struct conn *c, const char *data, size_t len);
static void conn_input(struct conn *c, const char *data, size_t len);
static size_t conn_input_room(const struct conn *c);
static void conn_stop_reading(struct conn *c);
static bool conn_holds_input(const struct conn *c);
static void idle_cb(uv_idle_t *h);
static void conn_send_raw(struct conn *c, const char *text, size_t len);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void exchange_write_done(struct http_exchange *x, int status);
static bool conn_pull_tls(struct conn *c);
static void exchange_finish(struct http_exchange *x);
static void log_tls_failure(struct conn *c, const char *why);
static void conn_handshake_over(struct conn *c);
static void server_maybe_done(struct http_server *srv);

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

/* --- Timers ------------------------------------------------------------------ */

static void conn_timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->timer_mode == TIMER_HEADER && c->rp != NULL && c->active == NULL) {
        static const char resp[] = "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";
        conn_send_raw(c, resp, sizeof(resp) - 1);
        log_msg(LOG_DEBUG, "closing connection from %s: request headers not received in time",
                c->remote);
    } else if (c->timer_mode == TIMER_WRITE) {
        log_msg(LOG_INFO, "closing connection from %s: client stopped reading the response",
                c->remote);
    } else if (c->timer_mode == TIMER_BODY) {
        log_msg(LOG_INFO, "closing connection from %s: request body stalled", c->remote);
    }
    conn_close(c);
}

static void conn_set_timer(struct conn *c, enum timer_mode mode)
{
    unsigned ms = 0;
    const struct http_server_opts *o = &c->srv->opts;
    switch (mode) {
    case TIMER_HEADER:
        ms = o->header_timeout_ms;
        break;
    case TIMER_IDLE:
    case TIMER_BODY:
        ms = o->idle_timeout_ms;
        break;
    case TIMER_WRITE:
        ms = o->write_timeout_ms;
        break;
    case TIMER_LINGER:
        ms = LINGER_MS;
        break;
    case TIMER_NONE:
        break;
    }
    c->timer_mode = mode;
    if (ms == 0 || c->closing) {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, conn_timer_cb, ms, 0);
}

/* --- Request parsing ------------------------------------------------------------- */

static struct reqparse *reqparse_new(void)
{
    struct reqparse *rp = calloc(1, sizeof(*rp));
    if (rp == NULL) return NULL;
    rp->cap = 1024;
    rp->buf = malloc(rp->cap);
    if (rp->buf == NULL) {
        free(rp);
        return NULL;
    }
    return rp;
}

static void reqparse_free(struct reqparse *rp)
{
    if (rp == NULL) return;
    free(rp->buf);
    free(rp->hdrs);
    free(rp);
}

static int reqparse_append(struct conn *c, const char *at, size_t len)
{
    struct reqparse *rp = c->rp;
    size_t limit = c->srv->opts.max_header_bytes;
    if (rp->len + len > limit) {
        rp->too_large = true;
        c->parse_error_status = 431;
        return -1;
    }
    if (rp->len + len > rp->cap) {
        size_t cap = rp->cap;
        while (cap < rp->len + len)
            cap *= 2;
        if (cap > limit) cap = limit;
        char *nb = realloc(rp->buf, cap);
        if (nb == NULL) {
            c->parse_error_status = 503;
            return -1;
        }
        rp->buf = nb;
        rp->cap = cap;
    }
    memcpy(rp->buf + rp->len, at, len);
    rp->len += len;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rp == NULL) {
        c->rp = reqparse_new();
        if (c->rp == NULL) {
            c->parse_error_status = 503;
            return -1;
        }
    }
    conn_set_timer(c, TIMER_HEADER);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    c->rp->last = 1;
    c->rp->url_len += len;
    return reqparse_append(c, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct reqparse *rp = c->rp;
    if (rp == NULL) return 0; /* a chunked body's trailer: not kept */
    if (rp->last != 2) {
        if (rp->n_hdrs >= c->srv->opts.max_headers) {
            c->parse_error_status = 431;
            return -1;
        }
        if (rp->n_hdrs == rp->hdr_cap) {
            size_t cap = rp->hdr_cap ? rp->hdr_cap * 2 : 16;
            void *nh = realloc(rp->hdrs, cap * sizeof(*rp->hdrs));
            if (nh == NULL) {
                c->parse_error_status = 503;
                return -1;
            }
            rp->hdrs = nh;
            rp->hdr_cap = cap;
        }
        rp->hdrs[rp->n_hdrs].name_off = (uint32_t)rp->len;
        rp->hdrs[rp->n_hdrs].name_len = 0;
        rp->hdrs[rp->n_hdrs].value_off = 0;
        rp->hdrs[rp->n_hdrs].value_len = 0;
        rp->n_hdrs++;
        rp->last = 2;
    }
    rp->hdrs[rp->n_hdrs - 1].name_len += (uint32_t)len;
    return reqparse_append(c, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct reqparse *rp = c->rp;
    if (rp == NULL) return 0; /* a chunked body's trailer: not kept */
    if (rp->n_hdrs == 0) return -1;
    if (rp->last != 3) {
        rp->hdrs[rp->n_hdrs - 1].value_off = (uint32_t)rp->len;
        rp->last = 3;
    }
    rp->hdrs[rp->n_hdrs - 1].value_len += (uint32_t)len;
    return reqparse_append(c, at, len);
}

/* Builds the exchange from the parsed request; the request buffer moves into it. */
static struct http_exchange *exchange_from_request(struct conn *c)
{
    struct reqparse *rp = c->rp;
    struct http_exchange *x = calloc(1, sizeof(*x));
    if (x == NULL) return NULL;
    x->hdrs = calloc(rp->n_hdrs ? rp->n_hdrs : 1, sizeof(*x->hdrs));
    x->target = malloc(rp->url_len + 1);
    if (x->hdrs == NULL || x->target == NULL) {
        free(x->hdrs);
        free(x->target);
        free(x);
        return NULL;
    }
    x->conn = c;
    x->reqbuf = rp->buf;
    for (size_t i = 0; i < rp->n_hdrs; i++) {
        x->hdrs[i].name = rp->buf + rp->hdrs[i].name_off;
        x->hdrs[i].name_len = rp->hdrs[i].name_len;
        x->hdrs[i].value = rp->hdrs[i].value_len ? rp->buf + rp->hdrs[i].value_off : "";
        x->hdrs[i].value_len = rp->hdrs[i].value_len;
    }
    x->n_hdrs = rp->n_hdrs;
    /* The URL comes first in the buffer: on_url runs before any header callback. */
    memcpy(x->target, rp->buf, rp->url_len);
    x->target[rp->url_len] = '\0';
    char *q = memchr(x->target, '?', rp->url_len);
    if (q != NULL) {
        x->path_len = (size_t)(q - x->target);
        x->query = q + 1;
        x->query_len = rp->url_len - x->path_len - 1;
    } else {
        x->path_len = rp->url_len;
    }
    x->method = c->parser.method;
    x->http_minor = c->parser.http_minor;
    x->start_ns = now_ns();
    x->content_length = -1;
    rp->buf = NULL;
    reqparse_free(rp);
    c->rp = NULL;
    return x;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->rp == NULL) return 0; /* the end of a chunked body's trailers */
    bool has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length);
    if (!has_body) return 0; /* the request ends here: on_message_complete dispatches it */
    /* A request with a body (a push, in this API): dispatched now; the body is read when
     * the handler asks for it. Whether the connection is kept is known at its end. */
    struct http_exchange *x = exchange_from_request(c);
    if (x == NULL) {
        c->parse_error_status = 503;
        return -1;
    }
    x->has_body = true;
    x->keep_alive = false;
    x->body_length = (p->flags & F_CHUNKED) ? -1 : (int64_t)p->content_length;
    c->parsed = x;
    return HPE_PAUSED;
}

static bool conn_body_flowing(const struct conn *c);

/* A piece of a request body, for the handler that reads it. */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct http_exchange *x = c->active;
    if (!conn_body_flowing(c)) return HPE_PAUSED; /* cannot happen: fed only while flowing */
    if (len > 0) x->body_cbs.on_data(x, at, len, x->body_arg);
    return conn_body_flowing(c) ? 0 : HPE_PAUSED;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct http_exchange *b = c->active;
    if (b != NULL && b->has_body && !b->body_done) {
        /* The end of a body being read: what follows is the next request's. */
        b->body_done = true;
        b->keep_alive = llhttp_should_keep_alive(p);
        return HPE_PAUSED;
    }
    struct http_exchange *x = exchange_from_request(c);
    if (x == NULL) {
        c->parse_error_status = 503;
        return -1;
    }
    x->keep_alive = llhttp_should_keep_alive(p);
    c->parsed = x;
    return HPE_PAUSED;
}

/* --- TLS --------------------------------------------------------------------------- */

/*
 * Decrypts what the session holds and passes it to conn_input, until the session needs
 * more ciphertext, the connection holds all the input it may (reading stops then), or
 * the connection ends. Returns true when it stopped for want of ciphertext (reading the
 * socket may go on).
 */
static bool conn_pull_tls(struct conn *c)
{
    while (!c->closing) {
        size_t room = conn_input_room(c);
        if (room == 0) {
            conn_stop_reading(c);
            return false;
        }
        ssize_t n = tls_stream_read(&c->tls, c->srv->readbuf, room);
        if (c->handshaking && tls_stream_handshake_done(&c->tls)) conn_handshake_over(c);
        if (n == UV_EAGAIN) return true;
        if (n == UV_EOF && conn_holds_input(c)) {
            /* close_notify after requests not answered yet: the session reports it
             * again (tls_read_pending) when conn_start_reading asks, after them. */
            conn_stop_reading(c);
            return false;
        }
        if (n < 0) {
            if (n != UV_EOF) {
                if (tls_stream_peer_sent_plain_http(&c->tls)) {
                    static const char resp[] =
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                        "Content-Length: 39\r\nConnection: close\r\n\r\n"
                        "this server speaks https, not http :-)\n";
                    uv_buf_t b = uv_buf_init((char *)resp, sizeof(resp) - 1);
                    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
                } else {
                    /* The alert that says why (protocol_version, handshake_failure, ...)
                     * goes out before the close, so the client can tell. */
                    tls_stream_send_now(&c->tls, NULL, 0);
                }
                log_tls_failure(c, tls_stream_error(&c->tls));
            }
            conn_close(c);
            return false;
        }
        conn_input(c, c->srv->readbuf, (size_t)n);
    }
    return false;
}

/* After each write of ciphertext: a failed one (or a session that failed) closes. */
static void conn_tls_written(void *owner, int status)
{
    struct conn *c = owner;
    if (status >= 0 || c->closing) return;
    if (status == UV_EPROTO) log_tls_failure(c, tls_stream_error(&c->tls));
    conn_close(c);
}

/* Best effort before a close: a short plain answer, encrypted when the connection is. */
static void conn_send_raw(struct conn *c, const char *text, size_t len)
{
    if (!c->https) {
        uv_buf_t b = uv_buf_init((char *)text, (unsigned)len);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        return;
    }
    tls_stream_send_now(&c->tls, text, len);
}

/* --- Connections ------------------------------------------------------------------ */

static void conn_free_if_done(struct conn *c)
{
    if (!c->tcp_closed || !c->timer_closed || c->active != NULL) return;
    struct http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->n_conns--;
    atomic_fetch_sub(srv->bound_conns, 1);
    reqparse_free(c->rp);
    free(c->kept);
    if (c->https) tls_stream_free(&c->tls);
    free(c);
    server_maybe_done(srv);
}

static void conn_tcp_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->tcp_closed = true;
    conn_free_if_done(c);
}

static void conn_timer_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->timer_closed = true;
    conn_free_if_done(c);
}

static void ready_remove(struct conn *c)
{
    if (!c->on_ready_list) return;
    struct conn **pp = &c->srv->ready_head;
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->ready_next;
    if (*pp == c) *pp = c->ready_next;
    c->on_ready_list = false;
    c->ready_next = NULL;
}

/* Closes the connection. An exchange in progress is told that its client is gone. */
static void conn_close(struct conn *c)
{
    if (c->closing) return;
    c->closing = true;
    conn_handshake_over(c);
    ready_remove(c);
    uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_tcp_closed);
    struct http_exchange *x = c->active;
    if (x != NULL && !x->gone) {
        x->gone = true;
        /* A pending write gets its callback (UV_ECANCELED) from libuv; the handler is
         * told here when no write is pending, else after that callback. */
        if (!x->write_pending && !x->in_callback && !x->ended && x->gone_cb != NULL) {
            http_gone_cb g = x->gone_cb;
            x->gone_cb = NULL;
            g(x, x->gone_arg);
        }
    }
    /* A write in progress ends with UV_ECANCELED (now, when none of its bytes is with
     * libuv): the handler hears of the gone client then. */
    if (c->https) tls_stream_close(&c->tls);
}

static void conn_stop_reading(struct conn *c)
{
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* True while the handler reads a request body that has not ended and is not paused. */
static bool conn_body_flowing(const struct conn *c)
{
    const struct http_exchange *x = c->active;
    return x != NULL && x->has_body && x->body_started && !x->body_paused && !x->body_done &&
           !x->ended && !c->closing;
}

/* True while input goes to the kept bytes: an exchange runs (but for a body that
 * flows), or kept bytes wait. */
static bool conn_holds_input(const struct conn *c)
{
    return (c->active != NULL && !conn_body_flowing(c)) || c->kept != NULL;
}

/*
 * How many bytes of (plaintext) input the connection takes now: a read buffer's worth
 * when they are parsed, what is left of HELD_INPUT_MAX when they are held (also a body
 * not read yet, or paused), and nothing after a request that closes the connection, or
 * once the handler ended an exchange whose body it did not read to its end. Reading
 * stops when this is 0 and starts again only when the connection holds no input.
 */
static size_t conn_input_room(const struct conn *c)
{
    if (!conn_holds_input(c)) return sizeof(c->srv->readbuf);
    const struct http_exchange *x = c->active;
    bool body_unread = x != NULL && x->has_body && !x->body_done;
    if (x != NULL && (body_unread ? x->ended : (!x->keep_alive || x->close_after))) return 0;
    size_t room = c->kept_len < HELD_INPUT_MAX ? HELD_INPUT_MAX - c->kept_len : 0;
    return room < sizeof(c->srv->readbuf) ? room : sizeof(c->srv->readbuf);
}

/*
 * Appends input to the kept bytes (parsed by the idle handler after the exchange), and
 * stops reading when the connection may take no more. Returns false, having kept
 * nothing, when memory ran out.
 */
static bool conn_hold(struct conn *c, const char *data, size_t len)
{
    if (bytes_append(&c->kept, &c->kept_len, &c->kept_cap, data, len, 4096) != 0) return false;
    if (conn_input_room(c) == 0) conn_stop_reading(c);
    return true;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    if (c->https) {
        *buf = tls_stream_read_space(&c->tls); /* len 0 (UV_ENOBUFS): the session is full */
        return;
    }
    buf->base = c->srv->readbuf;
    buf->len = c->lingering ? sizeof(c->srv->readbuf)
                            : conn_input_room(c); /* 0 (UV_ENOBUFS): it holds all it may */
}

static void respond_parse_error(struct conn *c, int status)
{
    char resp[256];
    const char *reason = status == 431   ? "Request Header Fields Too Large"
                         : status == 503 ? "Service Unavailable"
                                         : "Bad Request";
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason, strlen(reason) + 1, reason);
    conn_send_raw(c, resp, (size_t)n);
    log_msg(LOG_INFO, "rejected request from %s: %d %s", c->remote, status, reason);
}

static void conn_dispatch(struct conn *c)
{
    struct http_exchange *x = c->parsed;
    c->parsed = NULL;
    c->active = x;
    if (c->srv->shutting_down) x->close_after = true;
    if (conn_input_room(c) == 0) conn_stop_reading(c);
    conn_set_timer(c, TIMER_NONE);
    c->srv->opts.on_request(x, c->srv->opts.ud);
}

/* Parses input; dispatches a request when one is complete. */
static void conn_feed(struct conn *c, const char *data, size_t len)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) {
        if (c->rp != NULL)
            c->timer_mode == TIMER_HEADER ? (void)0 : conn_set_timer(c, TIMER_HEADER);
        return;
    }
    if (err == HPE_PAUSED && c->parsed != NULL) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        size_t rest = len - used;
        if (rest > 0 && !conn_hold(c, data + used, rest)) {
            /* No memory for the pipelined rest: answer this request, then close (a body
             * that lost its first bytes is never read). */
            c->parsed->keep_alive = false;
            c->parsed->close_after = true;
            c->parsed->body_done = c->parsed->has_body;
        }
        conn_dispatch(c);
        return;
    }
    int status = c->parse_error_status ? c->parse_error_status : 400;
    if (c->active == NULL) respond_parse_error(c, status);
    if (status == 400)
        log_msg(LOG_DEBUG, "malformed request from %s: %s", c->remote,
                llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser) : "");
    conn_close(c);
}

/* Tells the handler what happened to its exchange during a body callback: that the
 * client went, and finishes an exchange it ended meanwhile. */
static void body_callbacks_over(struct http_exchange *x)
{
    x->in_callback = false;
    if (x->gone && !x->ended && x->gone_cb != NULL && !x->write_pending) {
        http_gone_cb g = x->gone_cb;
        x->gone_cb = NULL;
        x->in_callback = true;
        g(x, x->gone_arg);
        x->in_callback = false;
    }
    if (x->finish_deferred && !x->write_pending) exchange_finish(x);
}

/*
 * Parses body bytes of the active exchange (which must be flowing): on_body hands them
 * to the handler. Stops where the handler paused or ended the exchange, or at the body's
 * end; what is left is kept. The end is told after the parser has returned.
 */
static void conn_feed_body(struct conn *c, const char *data, size_t len)
{
    struct http_exchange *x = c->active;
    x->in_callback = true; /* the exchange outlives the parser's callbacks */
    /* Paused at the end of the headers, or where the handler paused: go on from there
     * (bytes come in order: kept ones are fed before any new one is taken). */
    llhttp_resume(&c->parser);
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        if (used < len && !c->closing && !conn_hold(c, data + used, len - used)) {
            log_msg(LOG_WARN, "closing connection from %s: no memory for its request body",
                    c->remote);
            conn_close(c);
        }
    } else if (err != HPE_OK && !c->closing) {
        log_msg(LOG_INFO, "closing connection from %s: malformed request body: %s", c->remote,
                llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser)
                                                    : llhttp_errno_name(err));
        conn_close(c);
    }
    if (x->body_done && !x->body_end_told && !x->ended && !c->closing) {
        x->body_end_told = true;
        if (x->body_cbs.on_end != NULL) x->body_cbs.on_end(x, x->body_arg);
    }
    body_callbacks_over(x); /* may free x; c lives until its handles are closed */
    if (c->closing) return;
    if (conn_body_flowing(c))
        conn_set_timer(c, TIMER_BODY); /* waiting for more of it */
    else if (c->timer_mode == TIMER_BODY)
        conn_set_timer(c, TIMER_NONE); /* paused: the handler paces it */
}

/* Input from the client (plaintext): parsed, or held while the connection holds input. */
static void conn_input(struct conn *c, const char *data, size_t len)
{
    if (!conn_holds_input(c)) {
        if (conn_body_flowing(c))
            conn_feed_body(c, data, len);
        else
            conn_feed(c, data, len);
        return;
    }
    if (!conn_hold(c, data, len)) {
        log_msg(LOG_WARN, "closing connection from %s: no memory for its pipelined requests",
                c->remote);
        conn_close(c);
    }
}

/* Input of a lingering connection: dropped; its end (or too much of it) closes. */
static void linger_read(struct conn *c, ssize_t nread)
{
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->lingered += (size_t)nread;
    if (c->https) {
        tls_stream_read_commit(&c->tls, (size_t)nread);
        ssize_t n;
        while ((n = tls_stream_read(&c->tls, c->srv->readbuf, sizeof(c->srv->readbuf))) > 0)
            ;
        if (n != UV_EAGAIN) {
            conn_close(c);
            return;
        }
    }
    if (c->lingered > LINGER_MAX) conn_close(c);
}

/* Closes after a response whose request body was not read: lingering first (LINGER_MS). */
static void conn_linger(struct conn *c)
{
    free(c->kept);
    c->kept = NULL;
    c->kept_len = c->kept_cap = 0;
    ready_remove(c);
    c->lingering = true;
    conn_set_timer(c, TIMER_LINGER);
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread == 0) return;
    if (c->lingering) {
        linger_read(c, nread);
        return;
    }
    if (nread < 0) {
        if (conn_holds_input(c) && (nread == UV_EOF || nread == UV_ENOBUFS)) {
            /* EOF: the requests before it are answered first (conn_start_reading closes
             * after them). UV_ENOBUFS: the connection holds all the input it may. */
            if (nread == UV_EOF) c->read_eof = true;
            conn_stop_reading(c);
            return;
        }
        /* EOF or an error. A request cut short is not answered. */
        conn_close(c);
        return;
    }
    if (c->https) {
        tls_stream_read_commit(&c->tls, (size_t)nread);
        conn_pull_tls(c);
        return;
    }
    conn_input(c, buf->base, (size_t)nread);
}

/*
 * Goes on reading when the connection holds no input (at accept, and after the kept
 * bytes are parsed): plaintext the session already holds comes first, and a client that
 * ended its side while its requests were answered is closed now, as a read would find.
 */
static void conn_start_reading(struct conn *c)
{
    if (c->closing) return;
    if (c->https && tls_stream_read_pending(&c->tls) && !conn_pull_tls(c)) return;
    if (c->read_eof) {
        if (!conn_holds_input(c)) conn_close(c);
        return;
    }
    if (c->reading || conn_input_room(c) == 0) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
        c->reading = true;
    else
        conn_close(c);
}

/* After an exchange: parse kept input, or wait for more. */
static void conn_continue(struct conn *c)
{
    if (c->closing) return;
    if (c->kept != NULL) {
        if (!c->on_ready_list) {
            c->on_ready_list = true;
            c->ready_next = c->srv->ready_head;
            c->srv->ready_head = c;
            uv_idle_start(&c->srv->idle, idle_cb);
        }
        return;
    }
    if (c->srv->shutting_down) {
        conn_close(c);
        return;
    }
    llhttp_resume(&c->parser);
    conn_set_timer(c, TIMER_IDLE);
    conn_start_reading(c);
}

static void idle_cb(uv_idle_t *h)
{
    struct http_server *srv = h->data;
    struct conn *list = srv->ready_head;
    srv->ready_head = NULL;
    uv_idle_stop(h);
    while (list != NULL) {
        struct conn *c = list;
        list = c->ready_next;
        c->ready_next = NULL;
        c->on_ready_list = false;
        if (c->closing) continue;
        if (c->active != NULL) {
            /* A body the handler started or resumed: kept bytes first, then the socket. */
            if (!conn_body_flowing(c)) continue;
            if (c->kept != NULL) {
                char *body = c->kept;
                size_t body_len = c->kept_len;
                c->kept = NULL;
                c->kept_len = 0;
                c->kept_cap = 0;
                conn_feed_body(c, body, body_len);
                free(body);
            }
            if (conn_body_flowing(c) && c->kept == NULL) {
                conn_set_timer(c, TIMER_BODY);
                conn_start_reading(c);
            }
            continue;
        }
        char *kept = c->kept;
        size_t kept_len = c->kept_len;
        c->kept = NULL;
        c->kept_len = 0;
        c->kept_cap = 0;
        llhttp_resume(&c->parser);
        conn_feed(c, kept, kept_len);
        free(kept);
        if (!c->closing && c->active == NULL && c->parsed == NULL) {
            conn_set_timer(c, c->rp ? TIMER_HEADER : TIMER_IDLE);
            conn_start_reading(c);
        }
    }
}

/*
 * Past the fd limit libuv accepts a connection and closes it at once, with no callback, so
 * the log would not say why clients are dropped. A connection whose descriptor is in the
 * top tenth of RLIMIT_NOFILE is the warning sign: logged at most once every 10 s.
 */
static void warn_fd_limit(struct http_server *srv, struct conn *c)
{
    uv_os_fd_t fd;
    if (srv->nofile == 0 || uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0) return;
    if ((uint64_t)fd < srv->nofile - srv->nofile / 10) return;
    unsigned count;
    if (!throttle_event(&srv->fd_warn, now_ns(), &count)) return;
    log_msg(LOG_WARN,
            "open files near the limit: descriptor %d of RLIMIT_NOFILE %" PRIu64 " (%u "
            "connections near it since the last warning, %u open); past the limit, new "
            "connections are closed at once: raise the limit (LimitNOFILE=, ulimit -n)",
            (int)fd, srv->nofile, count, srv->n_conns);
}

/* A TLS failure of c, in the log at most once per THROTTLE_NS with a count. */
static void log_tls_failure(struct conn *c, const char *why)
{
    unsigned count;
    if (!throttle_event(&c->srv->tls_failed, now_ns(), &count)) return;
    if (count > 1)
        log_msg(LOG_INFO, "TLS with %s failed: %s (%u TLS failures since the last such line)",
                c->remote, why, count);
    else
        log_msg(LOG_INFO, "TLS with %s failed: %s", c->remote, why);
}

/* The handshake of c is over (done, or the connection closes): it no longer counts. */
static void conn_handshake_over(struct conn *c)
{
    if (!c->handshaking) return;
    c->handshaking = false;
    atomic_fetch_sub(&pending_handshakes, 1);
}

static void on_connection(uv_stream_t *listener, int status);

/*
 * Makes srv->listener listen on srv->bound_addr (the handle is initialized whatever
 * happens: close it on failure). With reuseport the socket is made first (init_ex), so
 * that the option precedes bind.
 */
static int listener_open(struct http_server *srv)
{
    struct sockaddr_storage *ss = &srv->bound_addr;
    int r =
        uv_tcp_init_ex(srv->loop, &srv->listener, srv->opts.reuseport ? ss->ss_family : AF_UNSPEC);
    if (r != 0) {
        uv_tcp_init(srv->loop, &srv->listener);
    } else if (srv->opts.reuseport) {
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)&srv->listener, &fd) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
            r = uv_translate_sys_error(errno);
    }
    srv->listener.data = srv;
    if (r == 0) r = uv_tcp_bind(&srv->listener, (struct sockaddr *)ss, 0);
    if (r == 0) r = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    return r;
}

#define ACCEPT_PAUSE_MS 250

static void server_handle_closed(uv_handle_t *h);

static void listener_pause_closed(uv_handle_t *h)
{
    struct http_server *srv = h->data;
    srv->listener_closing = false;
    if (srv->shutting_down) server_handle_closed(h); /* it counts as the listener's close */
}

/* Listens again on the same socket (a new duplicate of the spare): what queued meanwhile
 * is accepted now. Tried again later while no descriptor is free. */
static void accept_resume(uv_timer_t *t)
{
    struct http_server *srv = t->data;
    if (srv->shutting_down || !srv->listener_paused) return;
    int fd = srv->listener_closing ? -1 : fcntl(srv->listen_spare, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        uv_timer_start(&srv->shutdown_timer, accept_resume, ACCEPT_PAUSE_MS, 0);
        return;
    }
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    if (uv_tcp_open(&srv->listener, fd) != 0 ||
        uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection) != 0) {
        srv->listener_closing = true; /* (uv_close closes fd) */
        uv_close((uv_handle_t *)&srv->listener, listener_pause_closed);
        uv_timer_start(&srv->shutdown_timer, accept_resume, ACCEPT_PAUSE_MS, 0);
        return;
    }
    srv->listener_paused = false;
}

/*
 * Out of descriptors with other loops on the address (reuseport): libuv's way out (a
 * descriptor it keeps in reserve, per loop) does not hold when several loops race for
 * the same free descriptor, and accept would fail again at once, a spin. Instead this
 * loop stops watching its socket for ACCEPT_PAUSE_MS (the socket stays open through
 * listen_spare, so what queues meanwhile waits, and the other loops go on) and watches it
 * again. (The shutdown timer is free until a shutdown, which takes it over.)
 */
static void accept_pause(struct http_server *srv)
{
    if (srv->listener_paused || srv->shutting_down || srv->listen_spare < 0) return;
    srv->listener_paused = true;
    srv->listener_closing = true;
    uv_close((uv_handle_t *)&srv->listener, listener_pause_closed);
    uv_timer_start(&srv->shutdown_timer, accept_resume, ACCEPT_PAUSE_MS, 0);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct http_server *srv = listener->data;
    if (status < 0) {
        log_msg(LOG_WARN, "accept failed: %s", uv_strerror(status));
        if (srv->opts.reuseport && (status == UV_EMFILE || status == UV_ENFILE)) accept_pause(srv);
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) return;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        c->timer_closed = true;
        c->closing = true;
        c->srv = srv;
        srv->n_conns++;
        atomic_fetch_add(srv->bound_conns, 1);
        c->next = srv->conns;
        if (srv->conns) srv->conns->prev = c;
        srv->conns = c;
        uv_close((uv_handle_t *)&c->tcp, conn_tcp_closed);
        return;
    }
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->srv = srv;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    /* Counted at once where the bound is shared (loops accept at the same time); a
     * refused connection is counted until it is freed, as every other is. */
    unsigned open = atomic_fetch_add(srv->bound_conns, 1);
    unsigned count;
    if (open >= srv->opts.max_connections || srv->shutting_down) {
        if (throttle_event(&srv->refused, now_ns(), &count))
            log_msg(LOG_WARN,
                    "connection refused: %u connections open (limit %u; %u refused since the "
                    "last such line)",
                    open, srv->opts.max_connections, count);
        conn_close(c);
        return;
    }
    /* A place among the pending handshakes is taken at once (loops accept at the same
     * time), and given back if the connection does not start one. */
    unsigned handshaking = srv->tls != NULL ? atomic_fetch_add(&pending_handshakes, 1) : 0;
    if (srv->tls != NULL && handshaking >= srv->opts.max_pending_handshakes) {
        atomic_fetch_sub(&pending_handshakes, 1);
        /* Each pending handshake holds its session (~35 KiB): their number is bounded
         * apart from the connections'. */
        if (throttle_event(&srv->refused, now_ns(), &count))
            log_msg(LOG_WARN,
                    "connection refused: %u TLS handshakes pending (limit %u; %u refused since "
                    "the last such line)",
                    handshaking, srv->opts.max_pending_handshakes, count);
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char ip[64] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        snprintf(c->remote, sizeof(c->remote), "%s:%d", ip, port);
    }
    warn_fd_limit(srv, c);
    uv_tcp_nodelay(&c->tcp, 1);
    if (srv->tls != NULL) {
        c->handshaking = true; /* (its place is taken above) */
        if (tls_stream_init(&c->tls, (uv_stream_t *)&c->tcp, srv->tls, NULL, conn_tls_written, c) !=
            0) {
            log_msg(LOG_WARN, "connection from %s closed: cannot start a TLS session", c->remote);
            conn_close(c);
            return;
        }
        c->https = true;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    conn_set_timer(c, TIMER_HEADER);
    conn_start_reading(c);
}

/* --- Responses -------------------------------------------------------------------- */

static const char *status_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 416:
        return "Range Not Satisfiable";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static const char *http_date(struct http_server *srv)
{
    time_t t = time(NULL);
    if (t != srv->date_sec) {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(srv->date, sizeof(srv->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        srv->date_sec = t;
    }
    return srv->date;
}

static bool header_value_safe(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') return false;
    return true;
}

void http_respond_add_header(struct http_exchange *x, const char *name, const char *value)
{
    if (!header_value_safe(name, strlen(name)) || !header_value_safe(value, strlen(value))) return;
    size_t old = x->extra_head ? strlen(x->extra_head) : 0;
    size_t add = strlen(name) + strlen(value) + 5;
    char *n = realloc(x->extra_head, old + add);
    if (n == NULL) return;
    snprintf(n + old, add, "%s: %s\r\n", name, value);
    x->extra_head = n;
}

int http_respond_head(struct http_exchange *x, int status, const struct http_header *hdrs,
                      size_t n_hdrs, int64_t content_length)
{
    if (x->head_set || x->ended) return UV_EINVAL;
    struct http_server *srv = x->conn->srv;
    bool head_only = x->method == HTTP_HEAD || status == 204 || status == 304;
    x->status = status;
    x->content_length = content_length;
    if (!head_only && content_length < 0) {
        if (x->http_minor >= 1)
            x->chunked = true;
        else
            x->close_delimited = true;
    }
    if (x->close_delimited) x->close_after = true;
    if (!x->keep_alive) x->close_after = true;

    size_t extra_head_len = x->extra_head ? strlen(x->extra_head) : 0;
    size_t cap = 256 + srv->extra_len + extra_head_len;
    for (size_t i = 0; i < n_hdrs; i++)
        cap += hdrs[i].name_len + hdrs[i].value_len + 4;
    char *h = malloc(cap);
    if (h == NULL) return UV_ENOMEM;
    size_t pos = 0;
    pos += (size_t)snprintf(h + pos, cap - pos,
                            "HTTP/1.1 %d %s\r\nDate: %s\r\n"
                            "Docker-Distribution-Api-Version: registry/2.0\r\n",
                            status, status_reason(status), http_date(srv));
    memcpy(h + pos, srv->extra_headers, srv->extra_len);
    pos += srv->extra_len;
    if (extra_head_len > 0) {
        memcpy(h + pos, x->extra_head, extra_head_len);
        pos += extra_head_len;
    }
    for (size_t i = 0; i < n_hdrs; i++) {
        const struct http_header *hd = &hdrs[i];
        if (!header_value_safe(hd->name, hd->name_len) ||
            !header_value_safe(hd->value, hd->value_len))
            continue;
        memcpy(h + pos, hd->name, hd->name_len);
        pos += hd->name_len;
        h[pos++] = ':';
        h[pos++] = ' ';
        memcpy(h + pos, hd->value, hd->value_len);
        pos += hd->value_len;
        h[pos++] = '\r';
        h[pos++] = '\n';
    }
    char tail[96];
    int tl;
    if (content_length >= 0)
        tl = snprintf(tail, sizeof(tail), "Content-Length: %" PRId64 "\r\n", content_length);
    else if (x->chunked)
        tl = snprintf(tail, sizeof(tail), "Transfer-Encoding: chunked\r\n");
    else
        tl = 0;
    if (x->close_after)
        tl += snprintf(tail + tl, sizeof(tail) - (size_t)tl, "Connection: close\r\n\r\n");
    else if (x->http_minor == 0)
        tl += snprintf(tail + tl, sizeof(tail) - (size_t)tl, "Connection: keep-alive\r\n\r\n");
    else
        tl += snprintf(tail + tl, sizeof(tail) - (size_t)tl, "\r\n");
    memcpy(h + pos, tail, (size_t)tl);
    pos += (size_t)tl;
    x->head = h;
    x->head_len = pos;
    x->head_set = true;
    return 0;
}

int http_respond_full(struct http_exchange *x, int status, const struct http_header *hdrs,
                      size_t n_hdrs, const char *body, size_t len)
{
    int rc = http_respond_head(x, status, hdrs, n_hdrs, (int64_t)len);
    if (rc != 0) return rc;
    bool head_only = x->method == HTTP_HEAD || status == 204 || status == 304;
    if (!head_only && len > 0) {
        /* The body rides in the head's buffer: one write for the whole response. */
        char *h = realloc(x->head, x->head_len + len);
        if (h == NULL) return UV_ENOMEM;
        memcpy(h + x->head_len, body, len);
        x->head = h;
        x->head_len += len;
        x->body_sent = len;
    }
    http_respond_end(x);
    return 0;
}

static void exchange_write_cb(uv_write_t *req, int status)
{
    exchange_write_done(req->data, status);
}

/* A write of the exchange is over: bytes handed to the kernel (0) or failed. */
static void exchange_write_done(struct http_exchange *x, int status)
{
    struct conn *c = x->conn;
    x->write_pending = false;
    if (!c->closing) conn_set_timer(c, conn_body_flowing(c) ? TIMER_BODY : TIMER_NONE);
    if (status < 0) {
        x->close_after = true;
        if (!c->closing) conn_close(c); /* marks the exchange gone; the handler hears it below */
    }
    if (x->internal_write) {
        x->internal_write = false;
        x->finish_deferred = true;
    }
    /* The handler's callback, unless it has already ended the exchange. */
    x->in_callback = true;
    http_write_cb cb = x->ended ? NULL : x->wcb;
    x->wcb = NULL;
    if (cb != NULL) cb(x, status, x->warg);
    /* Tell the handler about a client that went away during the write. */
    if (x->gone && !x->ended && x->gone_cb != NULL && !x->write_pending) {
        http_gone_cb g = x->gone_cb;
        x->gone_cb = NULL;
        g(x, x->gone_arg);
    }
    x->in_callback = false;
    if (x->finish_deferred && !x->write_pending) exchange_finish(x);
}

static void exchange_tls_written(void *arg, int status)
{
    exchange_write_done(arg, status);
}

/* Writes bufs (after the head, when it has not gone out yet) with the exchange's request. */
static int exchange_write(struct http_exchange *x, uv_buf_t *bufs, unsigned n)
{
    uv_buf_t all[5];
    unsigned k = 0;
    if (!x->head_sent) {
        all[k++] = uv_buf_init(x->head, (unsigned)x->head_len);
        x->head_sent = true;
    }
    for (unsigned i = 0; i < n; i++)
        all[k++] = bufs[i];
    if (k == 0) return 1; /* nothing to write */
    if (x->conn->https) {
        /* Encrypted as the socket takes it; the exchange hears back when all of it went out. */
        struct conn *c = x->conn;
        int r = tls_stream_write(&c->tls, all, k, exchange_tls_written, x);
        if (r < 0) {
            log_tls_failure(c, r == UV_EPROTO ? tls_stream_error(&c->tls) : uv_strerror(r));
            conn_close(c);
            return UV_ECANCELED;
        }
        x->write_pending = true;
        conn_set_timer(c, TIMER_WRITE);
        return 0;
    }
    x->wreq.data = x;
    int r = uv_write(&x->wreq, (uv_stream_t *)&x->conn->tcp, all, k, exchange_write_cb);
    if (r < 0) return r;
    x->write_pending = true;
    conn_set_timer(x->conn, TIMER_WRITE);
    return 0;
}

int http_respond_body(struct http_exchange *x, const char *buf, size_t len, http_write_cb cb,
                      void *arg)
{
    if (x->gone || x->conn->closing) return UV_ECANCELED;
    if (x->write_pending) return UV_EBUSY;
    if (!x->head_set || x->method == HTTP_HEAD || x->ended) return UV_EINVAL;
    if (x->content_length >= 0 && x->body_sent + len > (uint64_t)x->content_length)
        return UV_EINVAL;
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (x->chunked) {
        if (len == 0) return UV_EINVAL;
        int hl = snprintf(x->chunk_hdr, sizeof(x->chunk_hdr), "%zx\r\n", len);
        bufs[n++] = uv_buf_init(x->chunk_hdr, (unsigned)hl);
        bufs[n++] = uv_buf_init((char *)buf, (unsigned)len);
        bufs[n++] = uv_buf_init("\r\n", 2);
    } else {
        bufs[n++] = uv_buf_init((char *)buf, (unsigned)len);
    }
    x->wcb = cb;
    x->warg = arg;
    int r = exchange_write(x, bufs, n);
    if (r < 0) {
        x->wcb = NULL;
        return r;
    }
    x->body_sent += len;
    return 0;
}

int http_respond_try(struct http_exchange *x, const char *data, size_t len)
{
    if (x->gone || x->conn->closing) return UV_ECANCELED;
    if (x->conn->https) return 0; /* everything goes through the session */
    if (x->write_pending || x->chunked || !x->head_set || x->method == HTTP_HEAD || x->ended)
        return 0;
    if (x->content_length >= 0 && x->body_sent + len > (uint64_t)x->content_length)
        return UV_EINVAL;
    uv_buf_t bufs[2];
    unsigned n = 0;
    size_t head_len = 0;
    if (!x->head_sent) {
        bufs[n++] = uv_buf_init(x->head, (unsigned)x->head_len);
        head_len = x->head_len;
    }
    bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
    int r = uv_try_write((uv_stream_t *)&x->conn->tcp, bufs, n);
    if (r == UV_EAGAIN) return 0;
    if (r < 0) return r;
    size_t wrote = (size_t)r;
    if (!x->head_sent) {
        if (wrote < head_len) {
            /* Keep the part of the head that did not go out. */
            memmove(x->head, x->head + wrote, head_len - wrote);
            x->head_len = head_len - wrote;
            return 0;
        }
        x->head_sent = true;
        wrote -= head_len;
    }
    x->body_sent += wrote;
    return (int)wrote;
}

void http_respond_end(struct http_exchange *x)
{
    if (x->ended) return;
    x->ended = true;
    if (x->gone || x->conn->closing) {
        exchange_finish(x);
        return;
    }
    if (!x->head_set) http_respond_head(x, 500, NULL, 0, 0);
    bool head_only = x->method == HTTP_HEAD || x->status == 204 || x->status == 304;
    if (!head_only && x->content_length >= 0 && x->body_sent != (uint64_t)x->content_length) {
        /* Short body: the client must not take it as whole. */
        x->close_after = true;
        x->abort_requested = true;
    }
    if (x->write_pending) {
        /* Not allowed by the contract; be safe: close after the write. */
        x->close_after = true;
        exchange_finish(x);
        return;
    }
    uv_buf_t b[1];
    unsigned n = 0;
    if (x->chunked && !x->abort_requested) b[n++] = uv_buf_init("0\r\n\r\n", 5);
    if (x->abort_requested && x->head_sent) {
        exchange_finish(x);
        return;
    }
    x->internal_write = true;
    int r = exchange_write(x, b, n);
    if (r != 0) {
        x->internal_write = false;
        if (r < 0) x->close_after = true;
        exchange_finish(x);
    }
}

void http_respond_abort(struct http_exchange *x)
{
    if (x->ended) return;
    x->ended = true;
    x->abort_requested = true;
    x->close_after = true;
    if (x->write_pending) conn_close(x->conn); /* the write's callback sees it and finishes */
    exchange_finish(x);
}

static void access_log(struct http_exchange *x)
{
    char line[LOG_LINE_MAX];
    char ua[1024];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const struct http_header *uah = http_req_header(x, "User-Agent");
    if (uah != NULL) snprintf(ua, sizeof(ua), "%.*s", (int)uah->value_len, uah->value);
    struct log_access_entry e = {
        .time = (double)now.tv_sec + (double)now.tv_nsec / 1e9,
        .method = llhttp_method_name((llhttp_method_t)x->method),
        .uri = x->log_uri ? x->log_uri : x->target,
        .repository = x->log_repo,
        .digest = x->log_digest,
        .status = x->status,
        .bytes = x->body_sent,
        .duration_ms = (double)(now_ns() - x->start_ns) / 1e6,
        .cache = x->cache,
        .upstream = x->log_upstream,
        .remote_addr = x->conn->remote,
        .user_agent = uah != NULL ? ua : NULL,
        .incomplete = x->abort_requested || x->gone,
        .stale = x->stale,
        .stale_age_s = x->stale_age_s,
        .error = x->log_error                      ? x->log_error
                 : (x->abort_requested || x->gone) ? "response not completed"
                                                   : NULL,
    };
    const struct http_server_opts *o = &x->conn->srv->opts;
    x->conn->srv->requests++;
    if (o->on_complete != NULL) o->on_complete(o->format_ud, &e);
    size_t n = o->format_access ? o->format_access(o->format_ud, &e, line, sizeof(line))
                                : log_format_access(&e, line, sizeof(line));
    log_access_line(line, n);
}

/* The exchange is over on both sides: log, free, and go on with the connection. */
static void exchange_finish(struct http_exchange *x)
{
    struct conn *c = x->conn;
    if (x->write_pending || x->in_callback) {
        x->finish_deferred = true; /* the write callback finishes it */
        return;
    }
    if (x->status == 0) x->status = x->gone ? 499 : 500;
    access_log(x);
    /* A body not read to its end leaves the connection in the middle of a request. */
    bool unread_body = x->has_body && !x->body_done;
    bool linger = unread_body && !x->abort_requested && !x->gone;
    bool close_after = x->close_after || x->abort_requested || unread_body;
    c->active = NULL;
    free(x->reqbuf);
    free(x->hdrs);
    free(x->target);
    free(x->head);
    free(x->log_upstream);
    free(x->log_repo);
    free(x->log_digest);
    free(x->log_error);
    free(x->log_uri);
    free(x->extra_head);
    free(x);
    if (c->closing) {
        conn_free_if_done(c);
        return;
    }
    if (close_after) {
        if (linger)
            conn_linger(c);
        else
            conn_close(c);
        return;
    }
    conn_continue(c);
}

/* --- Accessors -------------------------------------------------------------------- */

const char *http_req_method(const struct http_exchange *x)
{
    return llhttp_method_name((llhttp_method_t)x->method);
}

bool http_req_is_head(const struct http_exchange *x)
{
    return x->method == HTTP_HEAD;
}

bool http_req_can_chunk(const struct http_exchange *x)
{
    return x->http_minor >= 1;
}

bool http_req_is_get(const struct http_exchange *x)
{
    return x->method == HTTP_GET;
}

const char *http_req_path(const struct http_exchange *x, size_t *len)
{
    *len = x->path_len;
    return x->target;
}

const char *http_req_query(const struct http_exchange *x, size_t *len)
{
    *len = x->query_len;
    return x->query;
}

const char *http_req_target(const struct http_exchange *x)
{
    return x->target;
}

void http_req_headers(const struct http_exchange *x, const struct http_header **hdrs, size_t *n)
{
    *hdrs = x->hdrs;
    *n = x->n_hdrs;
}

const struct http_header *http_req_header(const struct http_exchange *x, const char *name)
{
    return http_header_find(x->hdrs, x->n_hdrs, name);
}

const char *http_req_remote_addr(const struct http_exchange *x)
{
    return x->conn->remote;
}

bool http_req_has_body(const struct http_exchange *x)
{
    return x->has_body;
}

int64_t http_req_body_length(const struct http_exchange *x)
{
    return x->has_body ? x->body_length : 0;
}

/* Puts c on the server's list of connections the idle handler goes on with. */
static void conn_kick(struct conn *c)
{
    if (c->on_ready_list || c->closing) return;
    c->on_ready_list = true;
    c->ready_next = c->srv->ready_head;
    c->srv->ready_head = c;
    uv_idle_start(&c->srv->idle, idle_cb);
}

/* "Expect: 100-continue": the client waits for a word before it sends the body. */
static void send_continue(struct http_exchange *x)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    const struct http_header *e = http_req_header(x, "Expect");
    if (e == NULL || e->value_len != 12 || strncasecmp(e->value, "100-continue", 12) != 0 ||
        x->http_minor == 0 || x->head_sent || x->write_pending)
        return;
    struct conn *c = x->conn;
    if (c->https) {
        if (tls_stream_send_small(&c->tls, cont, sizeof(cont) - 1) != 0) conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
    if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != (int)(sizeof(cont) - 1))
        conn_close(c); /* a part of it would garble the response: the client retries */
}

int http_req_body_start(struct http_exchange *x, const struct http_body_callbacks *cbs, void *arg)
{
    if (!x->has_body || x->body_started || x->ended || cbs == NULL || cbs->on_data == NULL)
        return UV_EINVAL;
    if (x->gone || x->conn->closing) return UV_ECANCELED;
    x->body_started = true;
    x->body_cbs = *cbs;
    x->body_arg = arg;
    send_continue(x);
    conn_kick(x->conn);
    return 0;
}

void http_req_body_pause(struct http_exchange *x)
{
    if (!x->body_started || x->body_paused) return;
    x->body_paused = true;
    if (!x->in_callback && !x->conn->closing) conn_set_timer(x->conn, TIMER_NONE);
}

void http_req_body_resume(struct http_exchange *x)
{
    if (!x->body_started || !x->body_paused) return;
    x->body_paused = false;
    conn_kick(x->conn);
}

bool http_req_body_done(const struct http_exchange *x)
{
    return x->has_body && x->body_done;
}

uint64_t http_req_start_ns(const struct http_exchange *x)
{
    return x->start_ns;
}

uv_loop_t *http_req_loop(const struct http_exchange *x)
{
    return x->conn->srv->loop;
}

void http_exchange_on_gone(struct http_exchange *x, http_gone_cb cb, void *arg)
{
    x->gone_cb = cb;
    x->gone_arg = arg;
}

bool http_exchange_client_gone(const struct http_exchange *x)
{
    return x->gone;
}

bool http_exchange_head_sent(const struct http_exchange *x)
{
    return x->head_sent;
}

static char *dup_span(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

void http_log_set_cache(struct http_exchange *x, const char *result)
{
    x->cache = result;
}

void http_log_set_stale(struct http_exchange *x, uint64_t age_s)
{
    x->stale = true;
    x->stale_age_s = age_s;
}

void http_log_set_upstream(struct http_exchange *x, const char *upstream)
{
    free(x->log_upstream);
    x->log_upstream = upstream ? dup_span(upstream, strlen(upstream)) : NULL;
}

void http_log_set_target(struct http_exchange *x, const char *repo, size_t repo_len,
                         const char *digest, size_t digest_len)
{
    free(x->log_repo);
    free(x->log_digest);
    x->log_repo = repo ? dup_span(repo, repo_len) : NULL;
    x->log_digest = digest ? dup_span(digest, digest_len) : NULL;
}

const char *http_log_repo(const struct http_exchange *x, size_t *len)
{
    *len = x->log_repo ? strlen(x->log_repo) : 0;
    return x->log_repo;
}

void http_log_set_uri(struct http_exchange *x, const char *uri)
{
    free(x->log_uri);
    x->log_uri = uri ? dup_span(uri, strlen(uri)) : NULL;
}

const char *http_log_uri(const struct http_exchange *x)
{
    return x->log_uri ? x->log_uri : x->target;
}

void http_log_set_error(struct http_exchange *x, const char *error)
{
    free(x->log_error);
    x->log_error = error ? dup_span(error, strlen(error)) : NULL;
}

/* --- The server ------------------------------------------------------------------- */

static int parse_listen_addr(const char *addr, struct sockaddr_storage *ss)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) return UV_EINVAL;
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof(host)) return UV_EINVAL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535) return UV_EINVAL;
    if (host[0] == '[') {
        size_t l = strlen(host);
        if (l < 2 || host[l - 1] != ']') return UV_EINVAL;
        host[l - 1] = '\0';
        return uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss);
    }
    if (host[0] == '\0') return uv_ip4_addr("0.0.0.0", (int)port, (struct sockaddr_in *)ss);
    if (strcmp(host, "localhost") == 0)
        return uv_ip4_addr("127.0.0.1", (int)port, (struct sockaddr_in *)ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) return 0;
    return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss);
}

int http_server_listen(uv_loop_t *loop, const char *addr, const struct http_server_opts *opts,
                       struct http_server **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int r = parse_listen_addr(addr, &ss);
    if (r != 0) {
        snprintf(err, errlen, "http.addr %s: expected host:port, :port or [v6]:port", addr);
        return UV_EINVAL;
    }
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) return UV_ENOMEM;
    srv->loop = loop;
    srv->opts = *opts;
    srv->tls = opts->tls ? tls_config_ref(opts->tls) : NULL;
    if (!srv->opts.max_header_bytes) srv->opts.max_header_bytes = 16384;
    if (!srv->opts.max_headers) srv->opts.max_headers = 100;
    if (!srv->opts.header_timeout_ms) srv->opts.header_timeout_ms = 10000;
    if (!srv->opts.idle_timeout_ms) srv->opts.idle_timeout_ms = 60000;
    if (!srv->opts.write_timeout_ms) srv->opts.write_timeout_ms = 60000;
    if (!srv->opts.max_connections) srv->opts.max_connections = 16384;
    srv->bound_conns = opts->connections != NULL ? opts->connections : &srv->own_conns;
    if (!srv->opts.max_pending_handshakes) srv->opts.max_pending_handshakes = 1024;
    size_t cap = 1;
    for (size_t i = 0; i < opts->n_extra_headers; i++)
        cap += opts->extra_headers[i].name_len + opts->extra_headers[i].value_len + 4;
    srv->extra_headers = malloc(cap);
    if (srv->extra_headers == NULL) {
        free(srv);
        return UV_ENOMEM;
    }
    for (size_t i = 0; i < opts->n_extra_headers; i++) {
        const struct http_header *h = &opts->extra_headers[i];
        if (!header_value_safe(h->value, h->value_len)) continue;
        srv->extra_len += (size_t)snprintf(srv->extra_headers + srv->extra_len,
                                           cap - srv->extra_len, "%.*s: %.*s\r\n", (int)h->name_len,
                                           h->name, (int)h->value_len, h->value);
    }
    srv->opts.extra_headers = NULL;
    srv->opts.n_extra_headers = 0;
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;

    uv_idle_init(loop, &srv->idle);
    srv->idle.data = srv;
    uv_timer_init(loop, &srv->shutdown_timer);
    srv->shutdown_timer.data = srv;
    srv->handles_open = 3;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        srv->nofile = (uint64_t)rl.rlim_cur;
    srv->bound_addr = ss;
    srv->listen_spare = -1;
    r = listener_open(srv);
    uv_os_fd_t lfd;
    if (r == 0 && opts->reuseport && uv_fileno((uv_handle_t *)&srv->listener, &lfd) == 0)
        srv->listen_spare = fcntl(lfd, F_DUPFD_CLOEXEC, 0);
    if (r != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, uv_strerror(r));
        srv->shutting_down = true;
        http_server_shutdown(srv, 0, NULL, NULL);
        return r;
    }
    struct sockaddr_storage bound;
    int bl = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &bl);
    char ip[64] = "?";
    int port = 0;
    if (bound.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        snprintf(srv->address, sizeof(srv->address), "[%s]:%d", ip, port);
    } else {
        uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        snprintf(srv->address, sizeof(srv->address), "%s:%d", ip, port);
    }
    *out = srv;
    return 0;
}

const char *http_server_address(const struct http_server *srv)
{
    return srv->address;
}

unsigned http_server_connections(const struct http_server *srv)
{
    return srv->n_conns;
}

uint64_t http_server_requests(const struct http_server *srv)
{
    return srv->requests;
}

void http_server_render_metrics(const void *srv, struct textbuf *out)
{
    metrics_value(out, "content_cache_connections", "gauge", "Client connections open.",
                  http_server_connections(srv));
}

static void server_handle_closed(uv_handle_t *h)
{
    struct http_server *srv = h->data;
    srv->handles_open--;
    server_maybe_done(srv);
}

static void server_maybe_done(struct http_server *srv)
{
    if (!srv->shutting_down || srv->n_conns > 0) return;
    if (!srv->handles_closing) {
        srv->handles_closing = true;
        uv_close((uv_handle_t *)&srv->idle, server_handle_closed);
        uv_close((uv_handle_t *)&srv->shutdown_timer, server_handle_closed);
        return;
    }
    if (srv->handles_open == 0) {
        void (*done)(void *) = srv->shutdown_done;
        void *arg = srv->shutdown_arg;
        free(srv->extra_headers);
        tls_config_free(srv->tls);
        if (srv->listen_spare >= 0) close(srv->listen_spare);
        free(srv);
        if (done) done(arg);
    }
}

static void shutdown_timer_cb(uv_timer_t *t)
{
    struct http_server *srv = t->data;
    if (srv->n_conns > 0)
        log_msg(LOG_WARN, "drain timeout: closing %u connections with responses in progress",
                srv->n_conns);
    for (struct conn *c = srv->conns; c != NULL; c = c->next)
        conn_close(c);
}

void http_server_shutdown(struct http_server *srv, unsigned timeout_ms, void (*done)(void *arg),
                          void *arg)
{
    srv->shutting_down = true;
    srv->shutdown_done = done;
    srv->shutdown_arg = arg;
    /* The duplicate of the listening socket goes with the listener: the port stops
     * listening now, not after the drain (connections would queue where none accepts). */
    if (srv->listen_spare >= 0) close(srv->listen_spare);
    srv->listen_spare = -1;
    uv_timer_stop(&srv->shutdown_timer); /* (an accept pause's) */
    if (srv->listener_paused) {
        /* Closed already, or closing: it counts as closed once that is done. */
        srv->listener_paused = false;
        if (!srv->listener_closing) srv->handles_open--; /* (else its close callback will) */
    } else if (!uv_is_closing((uv_handle_t *)&srv->listener))
        uv_close((uv_handle_t *)&srv->listener, server_handle_closed);
    struct conn *c = srv->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        if (c->active == NULL)
            conn_close(c);
        else
            c->active->close_after = true;
        c = next;
    }
    if (srv->n_conns > 0) uv_timer_start(&srv->shutdown_timer, shutdown_timer_cb, timeout_ms, 0);
    server_maybe_done(srv);
}
