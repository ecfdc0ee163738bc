/*
 * test_upstream.c: the upstream HTTP client against a scripted HTTP server that runs
 * on 127.0.0.1 in the same libuv loop.
 *
 * The server (struct srv) accepts connections, cuts requests at "\r\n\r\n", records
 * their heads and answers with route(), which picks a scripted response by path. The
 * tests run the loop until the request they started is done, check what the callbacks
 * saw and what the server saw, and end by closing the pool and the servers, running
 * the loop to completion and checking that nothing is left (uv_loop_close() == 0).
 *
 * A server with a TLS config (srv->tls) speaks https through the core's one pump,
 * tls_stream.h, as the cache's server does: ciphertext is read straight into the
 * session, responses are queued as plaintext and handed to the stream a few at a time,
 * which encrypts them as the session takes them and writes its output in place, so a
 * large body moves with backpressure. The certificates come from certs.h, made when
 * the test starts.
 */
#include "certs.h"
#include "check.h"
#include "net/tls.h"
#include "net/tls_stream.h"
#include "net/upstream.h"

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_HEADS 16
#define BIG_BODY (8u * 1024 * 1024)

/* --- The scripted server ---------------------------------------------------------- */

struct srv;

/* A piece of plaintext queued for a TLS connection. */
struct tseg {
    struct tseg *next;
    char *data;
    size_t len;
    bool owned;
};

struct sconn {
    uv_tcp_t tcp;
    struct srv *srv;
    struct sconn *next;
    uv_shutdown_t shutdown;
    bool closing, shut;
    int n_requests; /* on this connection */
    size_t len;
    char buf[16384];
    bool shutdown_started;
    /* TLS only. */
    bool https;
    struct tls_stream ts;
    struct tseg *queue, *queue_tail; /* plaintext not yet written */
    unsigned in_job;                 /* the first segments of the queue, being written */
    bool notified;                   /* close_notify said (after shut) */
};

struct srv {
    uv_tcp_t listener;
    int port;
    int other_port; /* the other server's, for cross-origin redirects */
    int accepted;
    int closed;
    int requests;
    int n_heads;
    char heads[MAX_HEADS][4096];
    struct sconn *conns;
    struct tls_config *tls; /* https when set */
    bool hang_up;           /* closes a connection as soon as it says anything */
    int handshakes;
    int tls_failures;
    char tls_error[320];
};

struct swrite {
    uv_write_t req;
    char *data;
    bool owned;
};

static void sconn_on_closed(uv_handle_t *h)
{
    struct sconn *sc = h->data;
    struct srv *s = sc->srv;
    for (struct sconn **pp = &s->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == sc) {
            *pp = sc->next;
            break;
        }
    }
    s->closed++;
    while (sc->queue != NULL) {
        struct tseg *g = sc->queue;
        sc->queue = g->next;
        if (g->owned) free(g->data);
        free(g);
    }
    if (sc->https) tls_stream_free(&sc->ts);
    free(sc);
}

static void sconn_close(struct sconn *sc)
{
    if (sc->closing) return;
    sc->closing = true;
    if (sc->https) tls_stream_close(&sc->ts);
    uv_close((uv_handle_t *)&sc->tcp, sconn_on_closed);
}

static void sconn_on_write(uv_write_t *w, int status)
{
    struct swrite *sw = (struct swrite *)w;
    if (sw->owned) free(sw->data);
    free(sw);
}

enum send_mode { SEND_COPY, SEND_OWNED, SEND_STATIC };

static void sconn_tls_send(struct sconn *sc);

/* Writes len bytes to the socket as they are (past TLS, on a TLS connection). */
static void sconn_write_raw(struct sconn *sc, char *data, size_t len, enum send_mode mode)
{
    struct swrite *sw = malloc(sizeof(*sw));
    sw->data = mode == SEND_COPY ? memcpy(malloc(len), data, len) : data;
    sw->owned = mode != SEND_STATIC;
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)len);
    if (uv_write(&sw->req, (uv_stream_t *)&sc->tcp, &b, 1, sconn_on_write) != 0) {
        if (sw->owned) free(sw->data);
        free(sw);
    }
}

/* Sends len bytes: a copy, or data itself (SEND_OWNED: freed after, SEND_STATIC: not). */
static void sconn_send_buf(struct sconn *sc, char *data, size_t len, enum send_mode mode)
{
    if (sc->closing || sc->shut) {
        if (mode == SEND_OWNED) free(data);
        return;
    }
    if (sc->https) {
        struct tseg *g = calloc(1, sizeof(*g));
        g->data = mode == SEND_COPY ? memcpy(malloc(len), data, len) : data;
        g->len = len;
        g->owned = mode != SEND_STATIC;
        if (sc->queue_tail != NULL)
            sc->queue_tail->next = g;
        else
            sc->queue = g;
        sc->queue_tail = g;
        sconn_tls_send(sc);
        return;
    }
    sconn_write_raw(sc, data, len, mode);
}

__attribute__((format(printf, 2, 3))) static void sconn_sendf(struct sconn *sc, const char *fmt,
                                                              ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    sconn_send_buf(sc, buf, (size_t)n, SEND_COPY);
}

static void sconn_on_shutdown(uv_shutdown_t *req, int status)
{
    sconn_close(req->data);
}

static void sconn_shutdown_now(struct sconn *sc)
{
    sc->shutdown_started = true;
    sc->shutdown.data = sc;
    if (uv_shutdown(&sc->shutdown, (uv_stream_t *)&sc->tcp, sconn_on_shutdown) != 0)
        sconn_close(sc);
}

/*
 * Closes the connection once everything queued is written (the client sees an EOF;
 * over TLS a close_notify first).
 */
static void sconn_end(struct sconn *sc)
{
    if (sc->closing || sc->shut) return;
    sc->shut = true;
    if (sc->https)
        sconn_tls_send(sc);
    else
        sconn_shutdown_now(sc);
}

/* --- TLS: through the core's pump (tls_stream.h) ------------------------------------- */

/* Ends the connection once the queue is written: close_notify, then the TCP end. */
static void sconn_tls_maybe_shut(struct sconn *sc)
{
    if (!sc->shut || sc->queue != NULL || sc->closing) return;
    if (!sc->notified) {
        sc->notified = true;
        if (tls_stream_close_notify(&sc->ts) != 0) {
            sconn_close(sc);
            return;
        }
    }
    if (tls_stream_in_flight(&sc->ts) == 0 && !sc->shutdown_started) sconn_shutdown_now(sc);
}

static void sconn_tls_job_done(void *arg, int status)
{
    struct sconn *sc = arg;
    for (; sc->in_job > 0; sc->in_job--) {
        struct tseg *g = sc->queue;
        sc->queue = g->next;
        if (sc->queue == NULL) sc->queue_tail = NULL;
        if (g->owned) free(g->data);
        free(g);
    }
    if (status < 0) {
        sconn_close(sc);
        return;
    }
    sconn_tls_send(sc);
}

/* After every write of the stream: a failure closes, the end of the output may shut. */
static void sconn_tls_written(void *owner, int status)
{
    struct sconn *sc = owner;
    if (status < 0) {
        sconn_close(sc);
        return;
    }
    if (sc->in_job == 0) sconn_tls_maybe_shut(sc);
}

/*
 * Hands the queued plaintext to the stream, a job of up to TLS_STREAM_JOB_BUFS segments
 * at a time (the next when it is written), and ends the connection after the queue when
 * it is to end.
 */
static void sconn_tls_send(struct sconn *sc)
{
    if (sc->closing || sc->in_job > 0) return;
    if (sc->queue == NULL) {
        sconn_tls_maybe_shut(sc);
        return;
    }
    uv_buf_t bufs[TLS_STREAM_JOB_BUFS];
    unsigned n = 0;
    for (struct tseg *g = sc->queue; g != NULL && n < TLS_STREAM_JOB_BUFS; g = g->next)
        bufs[n++] = uv_buf_init(g->data, (unsigned)g->len);
    sc->in_job = n;
    if (tls_stream_write(&sc->ts, bufs, n, sconn_tls_job_done, sc) != 0) {
        sc->in_job = 0;
        sconn_close(sc);
    }
}

/* The byte at offset i of the big bodies. */
static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 131) ^ (i >> 11));
}

static void route(struct sconn *sc, const char *method, const char *target);

static void sconn_alloc(uv_handle_t *h, size_t size, uv_buf_t *b)
{
    struct sconn *sc = h->data;
    if (sc->https) {
        *b = tls_stream_read_space(&sc->ts);
        return;
    }
    b->base = sc->buf + sc->len;
    b->len = sizeof(sc->buf) - sc->len;
}

static void sconn_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct sconn *sc = st->data;
    struct srv *s = sc->srv;
    if (n < 0 || (n > 0 && s->hang_up)) {
        sconn_close(sc);
        return;
    }
    if (sc->https) {
        /* (Reading also sends what the handshake has to say.) */
        tls_stream_read_commit(&sc->ts, (size_t)n);
        bool was_done = tls_stream_handshake_done(&sc->ts);
        ssize_t r = 0;
        while (sc->len < sizeof(sc->buf) &&
               (r = tls_stream_read(&sc->ts, sc->buf + sc->len, sizeof(sc->buf) - sc->len)) > 0)
            sc->len += (size_t)r;
        if (!was_done && tls_stream_handshake_done(&sc->ts)) s->handshakes++;
        if (r < 0 && r != UV_EAGAIN) {
            if (r != UV_EOF) {
                s->tls_failures++;
                snprintf(s->tls_error, sizeof(s->tls_error), "%s", tls_stream_error(&sc->ts));
            }
            sconn_close(sc);
            return;
        }
    } else {
        sc->len += (size_t)n;
    }
    char *end;
    while (!sc->closing && !sc->shut && (end = memmem(sc->buf, sc->len, "\r\n\r\n", 4)) != NULL) {
        size_t head_len = (size_t)(end + 4 - sc->buf);
        char head[4096];
        size_t keep = head_len < sizeof(head) ? head_len : sizeof(head) - 1;
        memcpy(head, sc->buf, keep);
        head[keep] = '\0';
        memmove(sc->buf, sc->buf + head_len, sc->len - head_len);
        sc->len -= head_len;
        s->requests++;
        sc->n_requests++;
        if (s->n_heads < MAX_HEADS) memcpy(s->heads[s->n_heads++], head, keep + 1);
        char method[16] = "", target[2048] = "";
        sscanf(head, "%15s %2047s", method, target);
        route(sc, method, target);
    }
}

static void srv_on_connection(uv_stream_t *listener, int status)
{
    struct srv *s = listener->data;
    if (status < 0) return;
    struct sconn *sc = calloc(1, sizeof(*sc));
    sc->srv = s;
    uv_tcp_init(listener->loop, &sc->tcp);
    sc->tcp.data = sc;
    if (uv_accept(listener, (uv_stream_t *)&sc->tcp) != 0) {
        sc->closing = true;
        uv_close((uv_handle_t *)&sc->tcp, sconn_on_closed);
        return;
    }
    sc->next = s->conns;
    s->conns = sc;
    s->accepted++;
    if (s->tls != NULL) {
        CHECK_INT(
            tls_stream_init(&sc->ts, (uv_stream_t *)&sc->tcp, s->tls, NULL, sconn_tls_written, sc),
            0);
        sc->https = true;
    }
    uv_read_start((uv_stream_t *)&sc->tcp, sconn_alloc, sconn_read);
}

static void srv_start(uv_loop_t *loop, struct srv *s)
{
    memset(s, 0, sizeof(*s));
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    CHECK_INT(uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&s->listener, 16, srv_on_connection), 0);
    struct sockaddr_in bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
    s->port = ntohs(bound.sin_port);
}

static void srv_stop(struct srv *s)
{
    tls_config_free(s->tls); /* (its sessions hold their own references) */
    s->tls = NULL;
    uv_close((uv_handle_t *)&s->listener, NULL);
    for (struct sconn *sc = s->conns; sc != NULL; sc = sc->next)
        sconn_close(sc);
}

/* The head of the request for `path` that the server saw, or NULL. */
static const char *srv_head_for(const struct srv *s, const char *path)
{
    char prefix[256];
    snprintf(prefix, sizeof(prefix), " %s HTTP/1.1\r\n", path);
    for (int i = 0; i < s->n_heads; i++)
        if (strstr(s->heads[i], prefix) != NULL) return s->heads[i];
    return NULL;
}

/* A response with a Content-Length body. */
static void reply(struct sconn *sc, int status, const char *extra, const char *body)
{
    sconn_sendf(sc, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n%s", status, strlen(body), extra,
                body);
}

/* The big responses, built once (building them while a test runs would eat its time). */
static char *big_response[2];
static size_t big_response_len[2];

static void big_responses_build(void)
{
    for (int chunked = 0; chunked < 2; chunked++) {
        size_t cap = BIG_BODY + BIG_BODY / 100 + 256;
        char *out = malloc(cap);
        size_t n;
        if (!chunked) {
            n = (size_t)snprintf(out, cap, "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
                                 BIG_BODY);
            for (size_t i = 0; i < BIG_BODY; i++)
                out[n++] = (char)pattern(i);
        } else {
            n = (size_t)snprintf(out, cap, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for (size_t off = 0; off < BIG_BODY;) {
                size_t chunk = BIG_BODY - off < 1000 ? BIG_BODY - off : 1000;
                n += (size_t)snprintf(out + n, cap - n, "%zx\r\n", chunk);
                for (size_t i = 0; i < chunk; i++)
                    out[n++] = (char)pattern(off + i);
                off += chunk;
                out[n++] = '\r';
                out[n++] = '\n';
            }
            n += (size_t)snprintf(out + n, cap - n, "0\r\n\r\n");
        }
        big_response[chunked] = out;
        big_response_len[chunked] = n;
    }
}

static void send_big(struct sconn *sc, bool chunked)
{
    sconn_send_buf(sc, big_response[chunked], big_response_len[chunked], SEND_STATIC);
}

static void route(struct sconn *sc, const char *method, const char *target)
{
    struct srv *s = sc->srv;
    bool head = strcmp(method, "HEAD") == 0;
    if (strcmp(target, "/hello") == 0) {
        reply(sc, 200, "X-Reply: yes\r\n", "hello world");
    } else if (strcmp(target, "/chunked") == 0) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n");
    } else if (strcmp(target, "/close-delimited") == 0) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\n\r\nuntil the end");
        sconn_end(sc);
    } else if (strcmp(target, "/head") == 0 && head) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n");
    } else if (strcmp(target, "/conn-close") == 0) {
        reply(sc, 200, "Connection: close\r\n", "bye");
        sconn_end(sc);
    } else if (strcmp(target, "/says-close") == 0) {
        reply(sc, 200, "Connection: close\r\n", "bye"); /* but leaves the socket open */
    } else if (strcmp(target, "/dir/sub/redir-rel") == 0) {
        reply(sc, 302, "Location: ../final?x=1\r\n", "moved");
    } else if (strcmp(target, "/redir-abs") == 0) {
        char extra[128];
        snprintf(extra, sizeof(extra), "Location: http://127.0.0.1:%d/final\r\n", s->port);
        reply(sc, 301, extra, "moved");
    } else if (strcmp(target, "/redir-same") == 0) {
        reply(sc, 307, "Location: /final\r\n", "");
    } else if (strcmp(target, "/redir-other") == 0) {
        char extra[128];
        snprintf(extra, sizeof(extra), "Location: http://127.0.0.1:%d/final\r\n", s->other_port);
        reply(sc, 302, extra, "");
    } else if (strcmp(target, "/redir-https") == 0) {
        reply(sc, 302, "Location: https://127.0.0.1:1/final\r\n", "");
    } else if (strcmp(target, "/redir-bigbody") == 0) {
        size_t n = 200000;
        char *out = malloc(n + 128);
        size_t len = (size_t)sprintf(out,
                                     "HTTP/1.1 302 Found\r\nLocation: /final\r\n"
                                     "Content-Length: %zu\r\n\r\n",
                                     n);
        memset(out + len, 'm', n);
        sconn_send_buf(sc, out, len + n, SEND_OWNED);
    } else if (strcmp(target, "/redir-eof") == 0) {
        /* A body that only the end of the connection would end, which never comes. */
        sconn_sendf(sc, "HTTP/1.1 302 Found\r\nLocation: /final\r\n\r\nmoved");
    } else if (strcmp(target, "/loop") == 0) {
        reply(sc, 302, "Location: /loop\r\n", "again");
    } else if (strcmp(target, "/final") == 0 || strcmp(target, "/dir/final?x=1") == 0) {
        reply(sc, 200, "", "final");
    } else if (strcmp(target, "/stall") == 0) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    } else if (strcmp(target, "/silent") == 0) {
        /* no answer at all */
    } else if (strcmp(target, "/cut") == 0) {
        char body[501];
        memset(body, 'c', 500);
        body[500] = '\0';
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n%s", body);
        sconn_end(sc);
    } else if (strcmp(target, "/tls-garbage") == 0) {
        /* An application-data record that was never encrypted. */
        sconn_write_raw(sc,
                        "\x17\x03\x03\x00\x20"
                        "0123456789abcdef0123456789abcdef",
                        37, SEND_COPY);
    } else if (strcmp(target, "/garbage") == 0) {
        sconn_sendf(sc, "garbage\r\n\r\n");
    } else if (strcmp(target, "/bighead") == 0) {
        size_t n = 70000;
        char *out = malloc(n + 128);
        size_t len = (size_t)sprintf(out, "HTTP/1.1 200 OK\r\nX-Big: ");
        memset(out + len, 'a', n);
        len += n;
        len += (size_t)sprintf(out + len, "\r\nContent-Length: 0\r\n\r\n");
        sconn_send_buf(sc, out, len, SEND_OWNED);
    } else if (strcmp(target, "/manyheaders") == 0) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\n");
        for (int i = 0; i < 101; i++)
            sconn_sendf(sc, "X-H%d: %d\r\n", i, i);
        sconn_sendf(sc, "Content-Length: 0\r\n\r\n");
    } else if (strcmp(target, "/big") == 0) {
        send_big(sc, false);
    } else if (strcmp(target, "/bigchunked") == 0) {
        send_big(sc, true);
    } else if (strcmp(target, "/stale") == 0) {
        if (sc->n_requests == 1)
            reply(sc, 200, "", "fresh");
        else
            sconn_close(sc); /* as if it had timed out just before the request came */
    } else if (strcmp(target, "/idle-close") == 0) {
        reply(sc, 200, "", "ok");
        sconn_end(sc);
    } else if (strcmp(target, "/continue") == 0) {
        sconn_sendf(sc,
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(target, "/trailing") == 0) {
        sconn_sendf(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
    } else {
        reply(sc, 404, "", "not found");
    }
}

/* --- The client side ---------------------------------------------------------------- */

struct call {
    uv_loop_t *loop;
    struct upstream_pool *pool;
    struct upstream_req *req;
    int heads, bodies, dones;
    int status;
    int64_t content_length;
    int err;
    char x_reply[64];
    char errmsg[512];
    char final_url[512];
    char body[4096];
    size_t body_len;
    uint64_t total;
    bool pattern_ok;
    /* Behaviours. */
    bool check_pattern;
    bool pause_in_body; /* pause in every on_body, resume from a 0 ms timer */
    bool long_pause;    /* one of the pauses lasts 600 ms, past the io timeout */
    bool long_pause_done;
    bool pause_in_head; /* pause in on_head, resume 50 ms later */
    bool cancel_in_head;
    bool cancel_in_body;
    bool cancel_in_done;
    bool close_pool_in_done;
    struct call *next_in_head; /* started from on_head after cancelling this one */
    const char *next_url;
    uv_timer_t resume_timer;
    bool timer_open;
    int resumes;
};

static void on_resume_timer(uv_timer_t *t)
{
    struct call *cl = t->data;
    cl->resumes++;
    upstream_resume(cl->req);
}

static void resume_later(struct call *cl, unsigned ms)
{
    if (!cl->timer_open) {
        uv_timer_init(cl->loop, &cl->resume_timer);
        cl->resume_timer.data = cl;
        cl->timer_open = true;
    }
    uv_timer_start(&cl->resume_timer, on_resume_timer, ms, 0);
}

static const struct upstream_callbacks call_cbs;

static int call_start(struct call *cl, const char *method, const char *url,
                      const struct upstream_header *h, size_t n, int max_redirects)
{
    struct upstream_request_spec spec = {
        .method = method, .url = url, .headers = h, .n_headers = n, .max_redirects = max_redirects};
    cl->pattern_ok = true;
    cl->status = -1;
    return upstream_request(cl->pool, &spec, &call_cbs, cl, &cl->req);
}

static void call_on_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                         int64_t content_length)
{
    struct call *cl = ud;
    cl->heads++;
    cl->status = status;
    cl->content_length = content_length;
    const struct http_header *x = http_header_find(hdrs, n, "X-Reply");
    if (x != NULL) snprintf(cl->x_reply, sizeof(cl->x_reply), "%.*s", (int)x->value_len, x->value);
    if (cl->cancel_in_head) {
        upstream_cancel(cl->req);
        if (cl->next_in_head != NULL)
            CHECK_INT(call_start(cl->next_in_head, "GET", cl->next_url, NULL, 0, 0), 0);
        return;
    }
    if (cl->pause_in_head) {
        upstream_pause(cl->req);
        resume_later(cl, 50);
    }
}

static void call_on_body(void *ud, const char *data, size_t len)
{
    struct call *cl = ud;
    cl->bodies++;
    if (cl->check_pattern) {
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)data[i] != pattern(cl->total + i)) cl->pattern_ok = false;
    } else {
        size_t room = sizeof(cl->body) - 1 - cl->body_len;
        size_t n = len < room ? len : room;
        memcpy(cl->body + cl->body_len, data, n);
        cl->body_len += n;
        cl->body[cl->body_len] = '\0';
    }
    cl->total += len;
    if (cl->cancel_in_body) {
        upstream_cancel(cl->req);
        return;
    }
    if (cl->pause_in_body) {
        upstream_pause(cl->req);
        bool long_one = cl->long_pause && !cl->long_pause_done && cl->total > 1024 * 1024;
        if (long_one) cl->long_pause_done = true;
        resume_later(cl, long_one ? 600 : 0);
    }
}

static void call_on_done(void *ud, int err)
{
    struct call *cl = ud;
    cl->dones++;
    cl->err = err;
    snprintf(cl->errmsg, sizeof(cl->errmsg), "%s", upstream_error_message(cl->req));
    snprintf(cl->final_url, sizeof(cl->final_url), "%s", upstream_final_url(cl->req));
    if (cl->cancel_in_done) upstream_cancel(cl->req); /* must be harmless */
    if (cl->close_pool_in_done) upstream_pool_close(cl->pool);
}

static const struct upstream_callbacks call_cbs = {
    .on_head = call_on_head,
    .on_body = call_on_body,
    .on_done = call_on_done,
};

struct env {
    uv_loop_t loop;
    struct srv a, b;
    struct upstream_pool *pool;
    bool pool_closed;
};

static void env_init(struct env *e, const struct upstream_pool_opts *opts)
{
    memset(e, 0, sizeof(*e));
    uv_loop_init(&e->loop);
    srv_start(&e->loop, &e->a);
    srv_start(&e->loop, &e->b);
    e->a.other_port = e->b.port;
    e->b.other_port = e->a.port;
    e->pool = upstream_pool_new(&e->loop, opts);
    CHECK(e->pool != NULL);
}

/*
 * As env_init, with server a speaking https with the certificate `cert` (and its key)
 * and the pool trusting the CA in `ca`. Server b stays plain http.
 */
static void env_init_tls(struct env *e, const struct upstream_pool_opts *opts, const char *ca,
                         const char *cert, const char *key)
{
    struct upstream_pool_opts o = {0};
    if (opts != NULL) o = *opts;
    const char *cas[] = {cert_path(ca)};
    char err[256] = "";
    CHECK_INT(tls_client_config_new(cas, 1, false, &o.tls, err, sizeof(err)), 0);
    env_init(e, &o);
    tls_config_free(o.tls); /* the pool keeps its own reference */
    CHECK_INT(tls_server_config_new(cert_path(cert), cert_path(key), "tls1.2", &e->a.tls, err,
                                    sizeof(err)),
              0);
}

static void call_init(struct call *cl, struct env *e)
{
    memset(cl, 0, sizeof(*cl));
    cl->loop = &e->loop;
    cl->pool = e->pool;
}

static void call_close(struct call *cl)
{
    if (cl->timer_open) {
        cl->timer_open = false;
        uv_close((uv_handle_t *)&cl->resume_timer, NULL);
    }
}

static void url_of(char *buf, size_t len, const struct srv *s, const char *path)
{
    snprintf(buf, len, "%s://127.0.0.1:%d%s", s->tls ? "https" : "http", s->port, path);
}

static void on_tick(uv_timer_t *t)
{
    if (t->data != NULL) *(bool *)t->data = true;
}

/*
 * Runs the loop until *value reaches want, or for `ms` when value is NULL. A ticking
 * timer keeps the loop waking up, so a wait for something that never comes ends at
 * the 20 s deadline instead of hanging.
 */
static void run_until(struct env *e, const int *value, int want, unsigned ms)
{
    uv_timer_t tick, stop;
    bool stopped = false;
    uv_timer_init(&e->loop, &tick);
    uv_timer_init(&e->loop, &stop);
    tick.data = NULL;
    stop.data = &stopped;
    uv_timer_start(&tick, on_tick, 10, 10);
    uv_timer_start(&stop, on_tick, value != NULL ? 20000 : ms, 0);
    while (!stopped && (value == NULL || *value < want))
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_close((uv_handle_t *)&stop, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
}

/* Runs the loop until cl is done. */
static void wait_done(struct env *e, struct call *cl)
{
    run_until(e, &cl->dones, 1, 0);
    CHECK_INT(cl->dones, 1);
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct env *e, unsigned ms)
{
    run_until(e, NULL, 0, ms);
}

/* Closes the pool and the servers, runs the loop out and checks that nothing is left. */
static void env_finish(struct env *e)
{
    if (!e->pool_closed) upstream_pool_close(e->pool);
    srv_stop(&e->a);
    srv_stop(&e->b);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&e->loop), 0);
}

/* One GET (or HEAD) on a fresh environment's server a, waited for. */
static void get(struct env *e, struct call *cl, const char *method, const char *path)
{
    char url[256];
    url_of(url, sizeof(url), &e->a, path);
    call_init(cl, e);
    CHECK_INT(call_start(cl, method, url, NULL, 0, 5), 0);
    wait_done(e, cl);
}

/* --- Tests -------------------------------------------------------------------------- */

static void test_get_content_length(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/hello");
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.heads, 1);
    CHECK_INT(cl.status, 200);
    CHECK_INT(cl.content_length, 11);
    CHECK_STR(cl.body, "hello world");
    CHECK_STR(cl.x_reply, "yes");
    char url[256], host[64];
    url_of(url, sizeof(url), &e.a, "/hello");
    CHECK_STR(cl.final_url, url);
    snprintf(host, sizeof(host), "Host: 127.0.0.1:%d\r\n", e.a.port);
    CHECK_CONTAINS(e.a.heads[0], "GET /hello HTTP/1.1\r\n");
    CHECK_CONTAINS(e.a.heads[0], host);
    CHECK_CONTAINS(e.a.heads[0], "User-Agent: content-cache/");
    env_finish(&e);
}

static void test_chunked(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/chunked");
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.content_length, -1);
    CHECK_STR(cl.body, "hello chunked world");
    env_finish(&e);
}

static void test_close_delimited(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/close-delimited");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c1.content_length, -1);
    CHECK_STR(c1.body, "until the end");
    get(&e, &c2, "GET", "/hello");
    CHECK_INT(c2.err, 0);
    CHECK_INT(e.a.accepted, 2);
    env_finish(&e);
}

static void test_head(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "HEAD", "/head");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c1.status, 200);
    CHECK_INT(c1.content_length, 12345);
    CHECK_INT(c1.bodies, 0);
    get(&e, &c2, "HEAD", "/head");
    CHECK_INT(c2.err, 0);
    CHECK_INT(c2.content_length, 12345);
    CHECK_INT(e.a.accepted, 1);
    CHECK_INT(e.a.requests, 2);
    env_finish(&e);
}

static void test_keep_alive_reuse(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/hello");
    get(&e, &c2, "GET", "/chunked");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "hello chunked world");
    CHECK_INT(e.a.accepted, 1);
    CHECK_INT(e.a.requests, 2);
    env_finish(&e);
}

static void test_connection_close_not_reused(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/conn-close");
    get(&e, &c2, "GET", "/conn-close");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "bye");
    CHECK_INT(e.a.accepted, 2);
    /* Said, but the server keeps the socket open: still not reused. */
    struct call c3, c4;
    get(&e, &c3, "GET", "/says-close");
    get(&e, &c4, "GET", "/hello");
    CHECK_INT(c3.err, 0);
    CHECK_INT(c4.err, 0);
    CHECK_INT(e.a.accepted, 4);
    /* And the client said it. */
    struct call c5, c6;
    const struct upstream_header close_hdr[] = {{"Connection", "close", false}};
    char url[256];
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&c5, &e);
    CHECK_INT(call_start(&c5, "GET", url, close_hdr, 1, 0), 0);
    wait_done(&e, &c5);
    get(&e, &c6, "GET", "/hello");
    CHECK_INT(c5.err, 0);
    CHECK_INT(c6.err, 0);
    CHECK_INT(e.a.accepted, 5); /* c5 took c4's pooled connection and closed it */
    env_finish(&e);
}

static void test_trailing_bytes_not_reused(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/trailing");
    CHECK_INT(c1.err, 0);
    CHECK_STR(c1.body, "ok");
    get(&e, &c2, "GET", "/hello");
    CHECK_INT(c2.err, 0);
    CHECK_INT(e.a.accepted, 2);
    env_finish(&e);
}

static void test_informational_skipped(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/continue");
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.heads, 1);
    CHECK_INT(cl.status, 200);
    CHECK_STR(cl.body, "ok");
    env_finish(&e);
}

static void test_redirect_relative(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/dir/sub/redir-rel");
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.heads, 1);
    CHECK_INT(cl.status, 200);
    CHECK_STR(cl.body, "final");
    char url[256];
    url_of(url, sizeof(url), &e.a, "/dir/final?x=1");
    CHECK_STR(cl.final_url, url);
    CHECK(srv_head_for(&e.a, "/dir/final?x=1") != NULL);
    CHECK_INT(e.a.accepted, 1); /* the redirect's body was drained, the connection kept */
    env_finish(&e);
}

static void test_redirect_absolute(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/redir-abs");
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.heads, 1);
    CHECK_STR(cl.body, "final");
    char url[256];
    url_of(url, sizeof(url), &e.a, "/final");
    CHECK_STR(cl.final_url, url);
    env_finish(&e);
}

static void test_redirect_not_followed_with_max_0(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/redir-abs");
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.status, 301);
    CHECK_STR(cl.body, "moved");
    CHECK_INT(e.a.requests, 1);
    env_finish(&e);
}

static void test_redirect_sensitive_headers(void)
{
    struct env e;
    struct call c1, c2;
    char url[256];
    const struct upstream_header hdrs[] = {
        {"Authorization", "Bearer secret", true},
        {"X-Trace", "t1", false},
    };
    env_init(&e, NULL);

    /* Same origin: the credential follows the redirect. */
    url_of(url, sizeof(url), &e.a, "/redir-same");
    call_init(&c1, &e);
    CHECK_INT(call_start(&c1, "GET", url, hdrs, 2, 5), 0);
    wait_done(&e, &c1);
    CHECK_INT(c1.err, 0);
    CHECK_STR(c1.body, "final");
    CHECK_CONTAINS(srv_head_for(&e.a, "/redir-same"), "Authorization: Bearer secret\r\n");
    CHECK_CONTAINS(srv_head_for(&e.a, "/final"), "Authorization: Bearer secret\r\n");

    /* Another port: it does not; the other headers do. */
    url_of(url, sizeof(url), &e.a, "/redir-other");
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, hdrs, 2, 5), 0);
    wait_done(&e, &c2);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "final");
    const char *at_b = srv_head_for(&e.b, "/final");
    CHECK(at_b != NULL);
    CHECK(at_b != NULL && strstr(at_b, "Authorization") == NULL);
    CHECK_CONTAINS(at_b, "X-Trace: t1\r\n");
    url_of(url, sizeof(url), &e.b, "/final");
    CHECK_STR(c2.final_url, url);
    env_finish(&e);
}

static void test_redirect_body_not_drained(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/redir-bigbody");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c1.heads, 1);
    CHECK_STR(c1.body, "final");
    CHECK_INT(e.a.accepted, 2);
    get(&e, &c2, "GET", "/redir-eof");
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "final");
    CHECK_INT(e.a.accepted, 3);
    env_finish(&e);
}

static void test_redirect_loop(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/loop");
    CHECK_INT(cl.err, UV_ELOOP);
    CHECK_INT(cl.heads, 0);
    CHECK_INT(cl.bodies, 0);
    char expect[256];
    snprintf(expect, sizeof(expect), "too many redirects (6) from http://127.0.0.1:%d/loop",
             e.a.port);
    CHECK_CONTAINS(cl.errmsg, expect);
    CHECK_INT(e.a.requests, 6);
    env_finish(&e);
}

static void test_redirect_to_https_not_supported(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/redir-https");
    CHECK_INT(cl.err, UV_ENOTSUP);
    CHECK_INT(cl.heads, 0);
    CHECK_CONTAINS(cl.errmsg, "https://127.0.0.1:1/final");
    env_finish(&e);
}

static void test_connect_refused(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    /* A port that was just free: bind, learn it, close. */
    uv_tcp_t t;
    struct sockaddr_in addr, bound;
    int len = sizeof(bound);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_init(&e.loop, &t);
    uv_tcp_bind(&t, (const struct sockaddr *)&addr, 0);
    uv_tcp_getsockname(&t, (struct sockaddr *)&bound, &len);
    int port = ntohs(bound.sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&e.loop, UV_RUN_NOWAIT);

    char url[256], expect[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 5), 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, UV_ECONNREFUSED);
    CHECK_INT(cl.heads, 0);
    snprintf(expect, sizeof(expect), "connect to 127.0.0.1:%d: connection refused", port);
    CHECK_STR(cl.errmsg, expect);
    env_finish(&e);
}

static void test_stall_times_out(void)
{
    struct env e;
    struct call cl;
    struct upstream_pool_opts opts = {.io_timeout_ms = 200};
    env_init(&e, &opts);
    uint64_t t0 = uv_now(&e.loop);
    get(&e, &cl, "GET", "/stall");
    uint64_t took = uv_now(&e.loop) - t0;
    CHECK_INT(cl.err, UV_ETIMEDOUT);
    CHECK_INT(cl.heads, 1);
    CHECK(took >= 190 && took < 5000);
    char expect[64];
    snprintf(expect, sizeof(expect), "127.0.0.1:%d: ", e.a.port);
    CHECK_CONTAINS(cl.errmsg, expect);
    CHECK_CONTAINS(cl.errmsg, "200ms");

    /* And a server that says nothing at all. */
    struct call c2;
    get(&e, &c2, "GET", "/silent");
    CHECK_INT(c2.err, UV_ETIMEDOUT);
    CHECK_INT(c2.heads, 0);
    CHECK_CONTAINS(c2.errmsg, "no response within 200ms");
    env_finish(&e);
}

static void test_cut_body_is_an_error(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/cut");
    CHECK(cl.err == UV_ECONNRESET || cl.err == UV_EPROTO);
    CHECK_INT(cl.heads, 1);
    CHECK_INT(cl.content_length, 1000);
    CHECK_INT(cl.total, 500);
    CHECK_CONTAINS(cl.errmsg, "500 of 1000");
    env_finish(&e);
}

static void test_malformed_response(void)
{
    struct env e;
    struct call cl;
    env_init(&e, NULL);
    get(&e, &cl, "GET", "/garbage");
    CHECK_INT(cl.err, UV_EPROTO);
    CHECK_INT(cl.heads, 0);
    CHECK_CONTAINS(cl.errmsg, "malformed response");
    env_finish(&e);
}

static void test_headers_too_big(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/bighead");
    CHECK_INT(c1.err, UV_E2BIG);
    CHECK_INT(c1.heads, 0);
    get(&e, &c2, "GET", "/manyheaders");
    CHECK_INT(c2.err, UV_E2BIG);
    CHECK_INT(c2.heads, 0);
    env_finish(&e);
}

/* Pause in every on_body, resume from the loop; one pause outlasts the io timeout. */
static void big_body_paced(const char *path, bool tls)
{
    struct env e;
    struct call cl;
    struct upstream_pool_opts opts = {.io_timeout_ms = 400};
    char url[256];
    if (tls)
        env_init_tls(&e, &opts, "ca.pem", "server.pem", "server.key");
    else
        env_init(&e, &opts);
    url_of(url, sizeof(url), &e.a, path);
    call_init(&cl, &e);
    cl.check_pattern = true;
    cl.pause_in_body = true;
    cl.long_pause = true;
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    CHECK_INT(cl.total, BIG_BODY);
    CHECK(cl.pattern_ok);
    CHECK(cl.long_pause_done);
    CHECK(cl.bodies > 1);
    CHECK_INT(e.a.handshakes, tls ? 1 : 0);
    call_close(&cl);
    env_finish(&e);
}

static void test_pause_resume_big_body(void)
{
    big_body_paced("/big", false);
}

static void test_pause_resume_big_chunked_body(void)
{
    big_body_paced("/bigchunked", false);
}

static void test_pause_in_head(void)
{
    struct env e;
    struct call c1, c2;
    char url[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&c1, &e);
    c1.pause_in_head = true;
    CHECK_INT(call_start(&c1, "GET", url, NULL, 0, 0), 0);
    uint64_t t0 = uv_now(&e.loop);
    wait_done(&e, &c1);
    CHECK_INT(c1.err, 0);
    CHECK_STR(c1.body, "hello world");
    CHECK(uv_now(&e.loop) - t0 >= 45);

    /* HEAD: no body, so on_done is what waits for the resume. */
    url_of(url, sizeof(url), &e.a, "/head");
    call_init(&c2, &e);
    c2.pause_in_head = true;
    CHECK_INT(call_start(&c2, "HEAD", url, NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK_INT(c2.err, 0);
    CHECK_INT(c2.resumes, 1);
    CHECK_INT(e.a.accepted, 1);
    call_close(&c1);
    call_close(&c2);
    env_finish(&e);
}

static void test_pause_before_the_response(void)
{
    struct env e;
    struct call cl;
    struct upstream_pool_opts opts = {.io_timeout_ms = 50};
    char url[256];
    env_init(&e, &opts);
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    upstream_pause(cl.req);
    upstream_pause(cl.req);
    run_for(&e, 150); /* past the io timeout: it must not run while paused */
    CHECK_INT(e.a.requests, 1);
    CHECK_INT(cl.heads + cl.dones, 0);
    upstream_resume(cl.req);
    CHECK_INT(cl.heads + cl.dones, 0); /* not from inside upstream_resume */
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    CHECK_STR(cl.body, "hello world");
    env_finish(&e);
}

static void test_cancel_in_body(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/big");
    call_init(&cl, &e);
    cl.check_pattern = true;
    cl.cancel_in_body = true;
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    run_until(&e, &e.a.closed, 1, 0); /* the client closes the connection */
    run_for(&e, 50);
    CHECK_INT(e.a.closed, 1);
    CHECK_INT(cl.bodies, 1);
    CHECK_INT(cl.dones, 0);
    CHECK(cl.pattern_ok);
    env_finish(&e);
}

static void test_cancel_in_head_and_start_another(void)
{
    struct env e;
    struct call c1, c2;
    char url[256], next[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/big");
    url_of(next, sizeof(next), &e.a, "/hello");
    call_init(&c1, &e);
    call_init(&c2, &e);
    c1.cancel_in_head = true;
    c1.next_in_head = &c2;
    c1.next_url = next;
    CHECK_INT(call_start(&c1, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK_INT(c1.heads, 1);
    CHECK_INT(c1.bodies, 0);
    CHECK_INT(c1.dones, 0);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "hello world");
    CHECK_INT(e.a.accepted, 2);
    env_finish(&e);
}

static void test_cancel_outside_callbacks(void)
{
    struct env e;
    struct call c1, c2;
    char url[256];
    env_init(&e, NULL);
    /* While the server is silent. */
    url_of(url, sizeof(url), &e.a, "/silent");
    call_init(&c1, &e);
    CHECK_INT(call_start(&c1, "GET", url, NULL, 0, 0), 0);
    run_for(&e, 30);
    upstream_cancel(c1.req);
    /* Before the connection is even up. */
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, NULL, 0, 0), 0);
    upstream_cancel(c2.req);
    run_for(&e, 30);
    CHECK_INT(c1.dones + c1.heads + c2.dones + c2.heads, 0);
    env_finish(&e);
}

static void test_cancel_in_done_and_pool_close_in_done(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&cl, &e);
    cl.cancel_in_done = true;
    cl.close_pool_in_done = true;
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    e.pool_closed = true;
    env_finish(&e);
}

static void test_stale_pooled_connection_is_retried(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, NULL);
    get(&e, &c1, "GET", "/stale");
    CHECK_STR(c1.body, "fresh");
    get(&e, &c2, "GET", "/stale"); /* the pooled connection dies on this one */
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "fresh");
    CHECK_INT(e.a.accepted, 2);
    CHECK_INT(e.a.requests, 3);
    env_finish(&e);
}

static void test_idle_connections_close(void)
{
    struct env e;
    struct call c1, c2, c3, c4;
    struct upstream_pool_opts opts = {.idle_timeout_ms = 50};
    env_init(&e, &opts);
    /* The idle timeout. */
    get(&e, &c1, "GET", "/hello");
    uint64_t t0 = uv_now(&e.loop);
    run_until(&e, &e.a.closed, 1, 0);
    CHECK_INT(e.a.closed, 1);
    CHECK(uv_now(&e.loop) - t0 >= 40);
    get(&e, &c2, "GET", "/hello");
    CHECK_INT(c2.err, 0);
    CHECK_INT(e.a.accepted, 2);
    /* The server closes an idle connection: the client notices and lets it go. */
    get(&e, &c3, "GET", "/idle-close");
    CHECK_INT(c3.err, 0);
    run_for(&e, 20);
    get(&e, &c4, "GET", "/hello");
    CHECK_INT(c4.err, 0);
    CHECK_INT(e.a.requests, 4);
    env_finish(&e);
}

static void test_bad_arguments(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", "https://127.0.0.1:1/x", NULL, 0, 0), UV_ENOTSUP);
    CHECK_INT(call_start(&cl, "GET", "ftp://127.0.0.1/x", NULL, 0, 0), UV_EINVAL);
    CHECK_INT(call_start(&cl, "GET", "http://user@127.0.0.1/x", NULL, 0, 0), UV_EINVAL);
    CHECK_INT(call_start(&cl, "GET", "http://127.0.0.1/a b", NULL, 0, 0), UV_EINVAL);
    url_of(url, sizeof(url), &e.a, "/hello");
    const struct upstream_header crlf[] = {{"X-Evil", "a\r\nInjected: yes", false}};
    CHECK_INT(call_start(&cl, "GET", url, crlf, 1, 0), UV_EINVAL);
    const struct upstream_header lf[] = {{"X-Evil", "a\nb", false}};
    CHECK_INT(call_start(&cl, "GET", url, lf, 1, 0), UV_EINVAL);
    const struct upstream_header host[] = {{"Host", "elsewhere", false}};
    CHECK_INT(call_start(&cl, "GET", url, host, 1, 0), UV_EINVAL);
    const struct upstream_header badname[] = {{"X Bad", "v", false}};
    CHECK_INT(call_start(&cl, "GET", url, badname, 1, 0), UV_EINVAL);
    CHECK_INT(call_start(&cl, "G T", url, NULL, 0, 0), UV_EINVAL);
    run_for(&e, 10);
    CHECK_INT(cl.dones + cl.heads, 0);
    CHECK_INT(e.a.accepted, 0);
    env_finish(&e);
}

static void test_query_and_user_agent(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    url_of(url, sizeof(url), &e.a, "/dir/final?x=1#frag");
    const struct upstream_header ua[] = {{"User-Agent", "docker/24", false}};
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, ua, 1, 0), 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    CHECK_STR(cl.body, "final");
    CHECK_CONTAINS(e.a.heads[0], "GET /dir/final?x=1 HTTP/1.1\r\n");
    CHECK_CONTAINS(e.a.heads[0], "User-Agent: docker/24\r\n");
    CHECK(strstr(e.a.heads[0], "content-cache/") == NULL);
    env_finish(&e);
}

static void test_host_name_is_resolved(void)
{
    struct env e;
    struct call cl;
    char url[256];
    env_init(&e, NULL);
    snprintf(url, sizeof(url), "http://localhost:%d/hello", e.a.port);
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &cl);
    /* localhost may name ::1 first, where nothing listens: the next address is tried. */
    CHECK_INT(cl.err, 0);
    CHECK_STR(cl.body, "hello world");
    char host[64];
    snprintf(host, sizeof(host), "Host: localhost:%d\r\n", e.a.port);
    CHECK_CONTAINS(e.a.heads[0], host);

    struct call c2;
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", "http://no-such-host.invalid/x", NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK(c2.err < 0);
    CHECK_CONTAINS(c2.errmsg, "resolve no-such-host.invalid: ");
    env_finish(&e);
}

/* --- https ------------------------------------------------------------------------- */

static void test_https_get_head_and_reuse(void)
{
    struct env e;
    struct call c1, c2, c3;
    env_init_tls(&e, NULL, "ca.pem", "server.pem", "server.key");
    get(&e, &c1, "GET", "/hello");
    CHECK_INT(c1.err, 0);
    CHECK_STR(c1.errmsg, "");
    CHECK_INT(c1.status, 200);
    CHECK_STR(c1.body, "hello world");
    CHECK_STR(c1.x_reply, "yes");
    char url[256], host[64];
    url_of(url, sizeof(url), &e.a, "/hello");
    CHECK_CONTAINS(url, "https://");
    CHECK_STR(c1.final_url, url);
    snprintf(host, sizeof(host), "Host: 127.0.0.1:%d\r\n", e.a.port);
    CHECK_CONTAINS(e.a.heads[0], "GET /hello HTTP/1.1\r\n");
    CHECK_CONTAINS(e.a.heads[0], host);

    get(&e, &c2, "HEAD", "/head");
    CHECK_INT(c2.err, 0);
    CHECK_INT(c2.content_length, 12345);
    CHECK_INT(c2.bodies, 0);
    get(&e, &c3, "GET", "/chunked");
    CHECK_INT(c3.err, 0);
    CHECK_STR(c3.body, "hello chunked world");
    /* One connection, one handshake, three requests. */
    CHECK_INT(e.a.accepted, 1);
    CHECK_INT(e.a.handshakes, 1);
    CHECK_INT(e.a.requests, 3);
    env_finish(&e);
}

static void test_https_pause_resume_big_body(void)
{
    big_body_paced("/big", true);
}

static void test_https_pause_resume_big_chunked_body(void)
{
    big_body_paced("/bigchunked", true);
}

/* Paused before the connection is up: the handshake and the request go on regardless. */
static void test_https_pause_before_the_response(void)
{
    struct env e;
    struct call cl;
    struct upstream_pool_opts opts = {.io_timeout_ms = 50};
    char url[256];
    env_init_tls(&e, &opts, "ca.pem", "server.pem", "server.key");
    url_of(url, sizeof(url), &e.a, "/hello");
    call_init(&cl, &e);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    upstream_pause(cl.req);
    run_until(&e, &e.a.requests, 1, 0); /* (a handshake may take a while on a busy machine) */
    run_for(&e, 150);                   /* past the io timeout: it must not run while paused */
    CHECK_INT(e.a.handshakes, 1);
    CHECK_INT(e.a.requests, 1);
    CHECK_INT(cl.heads + cl.dones, 0);
    upstream_resume(cl.req);
    CHECK_INT(cl.heads + cl.dones, 0);
    wait_done(&e, &cl);
    CHECK_INT(cl.err, 0);
    CHECK_STR(cl.body, "hello world");
    env_finish(&e);
}

static void test_https_unknown_authority_fails_fast(void)
{
    struct env e;
    struct call cl;
    env_init_tls(&e, NULL, "other-ca.pem", "server.pem", "server.key");
    uint64_t t0 = uv_now(&e.loop);
    get(&e, &cl, "GET", "/hello");
    CHECK(uv_now(&e.loop) - t0 < 2000);
    CHECK_INT(cl.err, UV_EPROTO);
    CHECK_INT(cl.heads, 0);
    char expect[128];
    snprintf(expect, sizeof(expect), "TLS to 127.0.0.1:%d: certificate signed by unknown authority",
             e.a.port);
    CHECK_STR(cl.errmsg, expect);
    CHECK_INT(e.a.requests, 0); /* nothing was sent to a server that was not verified */
    env_finish(&e);
}

static void test_https_certificate_checks(void)
{
    struct env e;
    struct call c1, c2, c3;
    char url[256], expect[160];
    /* A certificate for the name only: not for the address... */
    env_init_tls(&e, NULL, "ca.pem", "noip.pem", "server.key");
    get(&e, &c1, "GET", "/hello");
    CHECK_INT(c1.err, UV_EPROTO);
    snprintf(expect, sizeof(expect),
             "TLS to 127.0.0.1:%d: certificate name mismatch (wanted 127.0.0.1, the certificate "
             "is for localhost)",
             e.a.port);
    CHECK_STR(c1.errmsg, expect);
    /* ...but for the name (verified, and sent as SNI). */
    snprintf(url, sizeof(url), "https://localhost:%d/hello", e.a.port);
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "hello world");
    env_finish(&e);

    env_init_tls(&e, NULL, "ca.pem", "expired.pem", "server.key");
    get(&e, &c3, "GET", "/hello");
    CHECK_INT(c3.err, UV_EPROTO);
    snprintf(expect, sizeof(expect),
             "TLS to 127.0.0.1:%d: certificate expired (valid until 2001-01-01 00:00:00 UTC)",
             e.a.port);
    CHECK_STR(c3.errmsg, expect);
    env_finish(&e);
}

static void test_https_handshake_timeout(void)
{
    struct env e;
    struct call cl;
    struct upstream_pool_opts opts = {.connect_timeout_ms = 200};
    char url[256], expect[128];
    env_init_tls(&e, &opts, "ca.pem", "server.pem", "server.key");
    /* Server b speaks plain HTTP: it waits for a request head that never comes. */
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/hello", e.b.port);
    call_init(&cl, &e);
    uint64_t t0 = uv_now(&e.loop);
    CHECK_INT(call_start(&cl, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &cl);
    uint64_t took = uv_now(&e.loop) - t0;
    CHECK_INT(cl.err, UV_ETIMEDOUT);
    CHECK(took >= 190 && took < 5000);
    snprintf(expect, sizeof(expect), "TLS to 127.0.0.1:%d: handshake timed out after 200ms",
             e.b.port);
    CHECK_STR(cl.errmsg, expect);
    CHECK_INT(e.b.requests, 0);
    env_finish(&e);
}

static void test_https_broken_connections(void)
{
    struct env e;
    struct call c1, c2;
    char url[256], expect[160];
    env_init_tls(&e, NULL, "ca.pem", "server.pem", "server.key");
    /* A record that does not decrypt, in the middle of the exchange. */
    get(&e, &c1, "GET", "/tls-garbage");
    CHECK_INT(c1.err, UV_EPROTO);
    CHECK_INT(c1.heads, 0);
    snprintf(expect, sizeof(expect), "TLS to 127.0.0.1:%d: ", e.a.port);
    CHECK_CONTAINS(c1.errmsg, expect);
    CHECK_CONTAINS(c1.errmsg, "MAC");
    /* A server that hangs up on the ClientHello. */
    e.b.hang_up = true;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/hello", e.b.port);
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK(c2.err == UV_ECONNRESET);
    snprintf(expect, sizeof(expect), "TLS to 127.0.0.1:%d: connection closed during the handshake",
             e.b.port);
    CHECK_STR(c2.errmsg, expect);
    env_finish(&e);
}

static void test_https_and_http_are_not_mixed(void)
{
    struct env e;
    struct call c1, c2;
    char url[256], expect[128];
    env_init_tls(&e, NULL, "ca.pem", "server.pem", "server.key");
    get(&e, &c1, "GET", "/hello");
    CHECK_INT(c1.err, 0);
    /* Plain http to the same host and port: not the pooled TLS connection. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hello", e.a.port);
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, NULL, 0, 0), 0);
    wait_done(&e, &c2);
    CHECK_INT(c2.err, UV_ECONNRESET);
    snprintf(expect, sizeof(expect), "127.0.0.1:%d: connection closed before a response", e.a.port);
    CHECK_STR(c2.errmsg, expect);
    CHECK_INT(e.a.accepted, 2);
    CHECK_INT(e.a.tls_failures, 1);
    CHECK_STR(e.a.tls_error, "handshake failed: the client sent plain HTTP, not TLS");
    env_finish(&e);
}

static void test_https_ends_of_connections(void)
{
    struct env e;
    struct call c1, c2, c3, c4, c5, c6;
    env_init_tls(&e, NULL, "ca.pem", "server.pem", "server.key");
    /* A body that ends with the connection (close_notify, then the TCP end). */
    get(&e, &c1, "GET", "/close-delimited");
    CHECK_INT(c1.err, 0);
    CHECK_INT(c1.content_length, -1);
    CHECK_STR(c1.body, "until the end");
    get(&e, &c2, "GET", "/conn-close");
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "bye");
    CHECK_INT(e.a.accepted, 2);
    /* A pooled connection the server closed without a word: retried on a new one. */
    get(&e, &c3, "GET", "/stale");
    get(&e, &c4, "GET", "/stale");
    CHECK_INT(c4.err, 0);
    CHECK_STR(c4.body, "fresh");
    CHECK_INT(e.a.accepted, 4);
    /* An idle connection closed with close_notify: let go, the next request connects. */
    get(&e, &c5, "GET", "/idle-close");
    CHECK_INT(c5.err, 0);
    run_for(&e, 20);
    get(&e, &c6, "GET", "/hello");
    CHECK_INT(c6.err, 0);
    CHECK_INT(e.a.accepted, 5);
    CHECK_INT(e.a.tls_failures, 0);
    env_finish(&e);
}

static void test_https_redirects(void)
{
    struct env e;
    struct call c1, c2;
    char url[256];
    const struct upstream_header hdrs[] = {
        {"Authorization", "Bearer secret", true},
        {"X-Trace", "t1", false},
    };
    env_init_tls(&e, NULL, "ca.pem", "server.pem", "server.key");
    /* Within the https origin: the credential follows. */
    url_of(url, sizeof(url), &e.a, "/redir-same");
    call_init(&c1, &e);
    CHECK_INT(call_start(&c1, "GET", url, hdrs, 2, 5), 0);
    wait_done(&e, &c1);
    CHECK_INT(c1.err, 0);
    CHECK_STR(c1.body, "final");
    CHECK_CONTAINS(srv_head_for(&e.a, "/final"), "Authorization: Bearer secret\r\n");
    /* To plain http (another origin): followed, without the credential. */
    url_of(url, sizeof(url), &e.a, "/redir-other");
    call_init(&c2, &e);
    CHECK_INT(call_start(&c2, "GET", url, hdrs, 2, 5), 0);
    wait_done(&e, &c2);
    CHECK_INT(c2.err, 0);
    CHECK_STR(c2.body, "final");
    const char *at_b = srv_head_for(&e.b, "/final");
    CHECK(at_b != NULL && strstr(at_b, "Authorization") == NULL);
    CHECK_CONTAINS(at_b, "X-Trace: t1\r\n");
    url_of(url, sizeof(url), &e.b, "/final");
    CHECK_STR(c2.final_url, url);
    env_finish(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(120);
    certs_make();
    big_responses_build();
    RUN(test_get_content_length);
    RUN(test_chunked);
    RUN(test_close_delimited);
    RUN(test_head);
    RUN(test_keep_alive_reuse);
    RUN(test_connection_close_not_reused);
    RUN(test_trailing_bytes_not_reused);
    RUN(test_informational_skipped);
    RUN(test_redirect_relative);
    RUN(test_redirect_absolute);
    RUN(test_redirect_not_followed_with_max_0);
    RUN(test_redirect_sensitive_headers);
    RUN(test_redirect_body_not_drained);
    RUN(test_redirect_loop);
    RUN(test_redirect_to_https_not_supported);
    RUN(test_connect_refused);
    RUN(test_stall_times_out);
    RUN(test_cut_body_is_an_error);
    RUN(test_malformed_response);
    RUN(test_headers_too_big);
    RUN(test_pause_resume_big_body);
    RUN(test_pause_resume_big_chunked_body);
    RUN(test_pause_in_head);
    RUN(test_pause_before_the_response);
    RUN(test_cancel_in_body);
    RUN(test_cancel_in_head_and_start_another);
    RUN(test_cancel_outside_callbacks);
    RUN(test_cancel_in_done_and_pool_close_in_done);
    RUN(test_stale_pooled_connection_is_retried);
    RUN(test_idle_connections_close);
    RUN(test_bad_arguments);
    RUN(test_query_and_user_agent);
    RUN(test_host_name_is_resolved);
    RUN(test_https_get_head_and_reuse);
    RUN(test_https_pause_resume_big_body);
    RUN(test_https_pause_resume_big_chunked_body);
    RUN(test_https_pause_before_the_response);
    RUN(test_https_unknown_authority_fails_fast);
    RUN(test_https_certificate_checks);
    RUN(test_https_handshake_timeout);
    RUN(test_https_broken_connections);
    RUN(test_https_and_http_are_not_mixed);
    RUN(test_https_ends_of_connections);
    RUN(test_https_redirects);
    certs_remove();
    free(big_response[0]);
    free(big_response[1]);
    return check_summary();
}
