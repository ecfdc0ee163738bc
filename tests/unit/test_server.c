/*
 * test_server.c: the HTTP/1.1 server over real sockets on 127.0.0.1, plain and https.
 *
 * The server runs on the test's loop with a handler that holds the first request of a
 * connection for a while (or until asked) and answers every request with its path. The
 * client is a thread with a blocking socket (TLS through tls.h sessions on https), so
 * that it can send while the server is answering: the tests look at what the server
 * does with input that arrives then. Pipelined requests are answered in order, one at
 * a time; a client that half-closes after its requests gets its answers; a reset ends
 * the exchange at once; and a client that sends without reading cannot make the server
 * take more than a bounded amount. Request bodies (pushes) reach a handler that reads
 * them whole, with Content-Length or chunked, paced by pauses, after a 100 Continue, and
 * a request pipelined after a body is answered on the same connection; a body the
 * handler leaves unread closes the connection after its answer.
 */
#include "certs.h"
#include "check.h"
#include "net/server.h"
#include "net/tls.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* --- The server: a handler that can hold the first request -------------------------- */

struct test {
    uv_loop_t loop;
    struct http_server *srv;
    int port;
    bool hold;        /* hold the first request of the test */
    unsigned hold_ms; /* ...and answer it after this; 0: when the client asks */
    uv_timer_t release_timer;
    uv_async_t release_async; /* the client asks for the held request to be answered */
    uv_async_t client_done;   /* the client thread has finished its script */
    struct http_exchange *held;
    int requests;     /* dispatched to the handler */
    int out_of_order; /* requests whose path was not /<their rank> */
    int overlapping;  /* requests dispatched while another was not answered */
    int outstanding;
    int gone;         /* gone callbacks of the held request */
    int gone_at_done; /* ...counted when the client had finished */
    int completed;    /* exchanges logged */
    int last_status;
    /* Request bodies: read by body_* below. */
    uv_timer_t body_timer;        /* resumes a paused body */
    struct http_exchange *paused; /* the body it resumes */
    uint64_t body_bytes;          /* body bytes handed over, all requests */
    int bodies_ok;                /* bodies whose every byte was the expected one */
    int pauses;
};

/* A request body's byte at offset i: what the client sends and the handler expects. */
static unsigned char body_byte(uint64_t i)
{
    return (unsigned char)((i * 7 + i / 251) & 0xff);
}

struct body_reader {
    struct test *t;
    uint64_t got;
    bool bad;
    bool pause; /* X-Mode: pause: pause after each piece, resume 1 ms later */
};

static void respond(struct test *t, struct http_exchange *x)
{
    size_t len;
    const char *path = http_req_path(x, &len);
    t->outstanding--;
    CHECK_INT(http_respond_full(x, 200, NULL, 0, path, len), 0);
}

static void release(struct test *t)
{
    struct http_exchange *x = t->held;
    if (x == NULL) return;
    t->held = NULL;
    respond(t, x);
}

static void release_timer_cb(uv_timer_t *h)
{
    release(h->data);
}

static void release_async_cb(uv_async_t *h)
{
    release(h->data);
}

static void on_gone(struct http_exchange *x, void *arg)
{
    struct test *t = arg;
    t->gone++;
    if (x != t->held) return;
    t->held = NULL;
    t->outstanding--;
    http_respond_end(x);
}

static void body_timer_cb(uv_timer_t *h);

static void body_data(struct http_exchange *x, const char *data, size_t len, void *arg)
{
    struct body_reader *b = arg;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != body_byte(b->got + i)) b->bad = true;
    b->got += len;
    b->t->body_bytes += len;
    if (b->pause) {
        http_req_body_pause(x);
        b->t->pauses++;
        b->t->paused = x;
        uv_timer_start(&b->t->body_timer, body_timer_cb, 1, 0);
    }
}

static void body_timer_cb(uv_timer_t *h)
{
    struct test *t = h->data;
    struct http_exchange *x = t->paused;
    t->paused = NULL;
    if (x != NULL) http_req_body_resume(x);
}

static void body_end(struct http_exchange *x, void *arg)
{
    struct body_reader *b = arg;
    struct test *t = b->t;
    int64_t want = http_req_body_length(x);
    if (!b->bad && (want < 0 || (uint64_t)want == b->got)) t->bodies_ok++;
    free(b);
    http_exchange_on_gone(x, NULL, NULL);
    respond(t, x);
}

static void body_gone(struct http_exchange *x, void *arg)
{
    struct body_reader *b = arg;
    b->t->outstanding--;
    if (b->t->paused == x) b->t->paused = NULL;
    free(b);
    http_respond_end(x);
}

static bool header_is(struct http_exchange *x, const char *name, const char *value)
{
    const struct http_header *h = http_req_header(x, name);
    return h != NULL && h->value_len == strlen(value) && memcmp(h->value, value, h->value_len) == 0;
}

static void on_request(struct http_exchange *x, void *ud)
{
    struct test *t = ud;
    if (http_req_has_body(x) && !header_is(x, "X-Mode", "unread")) {
        t->outstanding++;
        t->requests++;
        struct body_reader *b = calloc(1, sizeof(*b));
        b->t = t;
        b->pause = header_is(x, "X-Mode", "pause");
        static const struct http_body_callbacks cbs = {body_data, body_end};
        http_exchange_on_gone(x, body_gone, b);
        CHECK_INT(http_req_body_start(x, &cbs, b), 0);
        CHECK_INT(http_req_body_start(x, &cbs, b), UV_EINVAL);
        return;
    }
    if (t->outstanding != 0) t->overlapping++;
    t->outstanding++;
    char want[32];
    size_t len;
    const char *path = http_req_path(x, &len);
    snprintf(want, sizeof(want), "/%d", t->requests);
    if (len != strlen(want) || memcmp(path, want, len) != 0) t->out_of_order++;
    t->requests++;
    if (t->hold && t->requests == 1) {
        t->held = x;
        http_exchange_on_gone(x, on_gone, t);
        if (t->hold_ms > 0) uv_timer_start(&t->release_timer, release_timer_cb, t->hold_ms, 0);
        return;
    }
    respond(t, x);
}

static void on_complete(void *ud, const struct log_access_entry *e)
{
    struct test *t = ud;
    t->completed++;
    t->last_status = e->status;
}

static void client_done_cb(uv_async_t *h)
{
    struct test *t = h->data;
    t->gone_at_done = t->gone;
    http_server_shutdown(t->srv, 2000, NULL, NULL);
    uv_close((uv_handle_t *)&t->client_done, NULL);
    uv_close((uv_handle_t *)&t->release_async, NULL);
    uv_close((uv_handle_t *)&t->release_timer, NULL);
    uv_close((uv_handle_t *)&t->body_timer, NULL);
}

/* --- The client: a thread with a blocking socket ----------------------------------- */

struct client {
    struct test *t;
    bool tls;
    int sndbuf; /* SO_SNDBUF before connecting; 0: the system's */
    void (*script)(struct client *c);
    int fd;
    struct tls_config *cfg;
    struct tls_session *s;
    char in[256 * 1024]; /* plaintext received and not parsed yet */
    size_t in_len;
    /* Results, checked by the test after the thread ends. */
    int responses;     /* whole 200 responses whose body was the path asked for, in order */
    int wrong;         /* responses that were not */
    bool eof_at_end;   /* the server closed after the last response */
    long sent_ahead;   /* script_bound: bytes the kernel took while the first was held */
    char failure[200]; /* the first thing that went wrong, "" when nothing */
};

static void client_fail(struct client *c, const char *what)
{
    if (c->failure[0] == '\0') snprintf(c->failure, sizeof(c->failure), "%s", what);
}

static bool send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static bool tls_flush(struct client *c)
{
    size_t len;
    const char *out = tls_out_peek(c->s, &len);
    if (len == 0) return true;
    if (!send_all(c->fd, out, len)) return false;
    tls_out_consume(c->s, len);
    return true;
}

/* Ciphertext from the socket into the session; false at EOF or an error. */
static bool tls_fill(struct client *c)
{
    char buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    return tls_feed(c->s, buf, (size_t)n) == (size_t)n;
}

static bool client_connect(struct client *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->sndbuf > 0) setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &c->sndbuf, sizeof(c->sndbuf));
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->t->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) return false;
    if (!c->tls) return true;
    const char *files[] = {cert_path("ca.pem")};
    char err[256];
    if (tls_client_config_new(files, 1, false, &c->cfg, err, sizeof(err)) != 0 ||
        tls_session_new(c->cfg, "127.0.0.1", &c->s) != 0)
        return false;
    for (;;) {
        int rc = tls_handshake(c->s);
        if (!tls_flush(c)) return false;
        if (rc == 0) return true;
        if (rc != UV_EAGAIN || !tls_fill(c)) return false;
    }
}

static bool client_send(struct client *c, const char *p, size_t len)
{
    if (!c->tls) return send_all(c->fd, p, len);
    while (len > 0) {
        ssize_t n = tls_write(c->s, p, len);
        if (n < 0 && n != UV_EAGAIN) return false;
        if (!tls_flush(c)) return false;
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        }
    }
    return true;
}

/* More plaintext into c->in; false at EOF or an error. */
static bool client_fill(struct client *c)
{
    if (c->in_len == sizeof(c->in)) return false;
    if (!c->tls) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
        if (n <= 0) return false;
        c->in_len += (size_t)n;
        return true;
    }
    for (;;) {
        ssize_t n = tls_read(c->s, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (n > 0) {
            c->in_len += (size_t)n;
            return true;
        }
        if (n != UV_EAGAIN || !tls_flush(c) || !tls_fill(c)) return false;
    }
}

/* Reads one response and checks that it is a 200 whose body is "/<rank>". */
static bool client_expect_response(struct client *c, int rank)
{
    char *end;
    while ((end = memmem(c->in, c->in_len, "\r\n\r\n", 4)) == NULL)
        if (!client_fill(c)) return false;
    size_t head = (size_t)(end - c->in) + 4;
    char *cl = memmem(c->in, head, "Content-Length: ", 16);
    size_t body = cl != NULL ? strtoul(cl + 16, NULL, 10) : 0;
    while (c->in_len < head + body)
        if (!client_fill(c)) return false;
    char want[32];
    snprintf(want, sizeof(want), "/%d", rank);
    if (memcmp(c->in, "HTTP/1.1 200 ", 13) == 0 && body == strlen(want) &&
        memcmp(c->in + head, want, body) == 0)
        c->responses++;
    else
        c->wrong++;
    memmove(c->in, c->in + head + body, c->in_len - head - body);
    c->in_len -= head + body;
    return true;
}

static void client_expect_responses(struct client *c, int from, int to)
{
    for (int i = from; i < to; i++)
        if (!client_expect_response(c, i)) {
            client_fail(c, "the connection ended before every response");
            return;
        }
}

static void client_expect_eof(struct client *c)
{
    c->eof_at_end = c->in_len == 0 && !client_fill(c);
}

/* A request for /<rank>; pad adds a header of that many bytes. */
static size_t request(char *buf, size_t cap, int rank, size_t pad)
{
    int n = snprintf(buf, cap, "GET /%d HTTP/1.1\r\nHost: t\r\n", rank);
    if (pad > 0) {
        n += snprintf(buf + n, cap - (size_t)n, "X-Pad: ");
        memset(buf + n, 'p', pad);
        n += (int)pad;
        n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    }
    n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    return (size_t)n;
}

static void client_close(struct client *c, bool reset)
{
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
    tls_session_free(c->s);
    tls_config_free(c->cfg);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    if (client_connect(c))
        c->script(c);
    else
        client_fail(c, "cannot connect");
    uv_async_send(&c->t->client_done);
    return NULL;
}

/* Runs a server with the given hold and the client's script against it. */
static void run(struct test *t, struct client *c, bool tls, bool hold, unsigned hold_ms)
{
    memset(t, 0, sizeof(*t));
    t->hold = hold;
    t->hold_ms = hold_ms;
    CHECK_INT(uv_loop_init(&t->loop), 0);
    struct tls_config *cfg = NULL;
    char err[256] = "";
    if (tls)
        CHECK_INT(tls_server_config_new(cert_path("server.pem"), cert_path("server.key"), "tls1.2",
                                        &cfg, err, sizeof(err)),
                  0);
    struct http_server_opts opts = {
        .on_request = on_request,
        .ud = t,
        .on_complete = on_complete,
        .format_ud = t,
        .tls = cfg,
    };
    CHECK_INT(http_server_listen(&t->loop, "127.0.0.1:0", &opts, &t->srv, err, sizeof(err)), 0);
    tls_config_free(cfg);
    t->port = atoi(strrchr(http_server_address(t->srv), ':') + 1);
    uv_timer_init(&t->loop, &t->release_timer);
    t->release_timer.data = t;
    uv_timer_init(&t->loop, &t->body_timer);
    t->body_timer.data = t;
    uv_async_init(&t->loop, &t->release_async, release_async_cb);
    t->release_async.data = t;
    uv_async_init(&t->loop, &t->client_done, client_done_cb);
    t->client_done.data = t;
    c->t = t;
    c->tls = tls;
    pthread_t th;
    CHECK_INT(pthread_create(&th, NULL, client_main, c), 0);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK_INT(uv_loop_close(&t->loop), 0);
    if (c->failure[0] != '\0')
        fprintf(stderr, "client (%s): %s\n", tls ? "https" : "http", c->failure);
    CHECK_STR(c->failure, "");
    CHECK_INT(t->overlapping, 0);
    CHECK_INT(t->out_of_order, 0);
}

/* --- Tests ----------------------------------------------------------------------------- */

/* Requests sent while the first is answered, in several writes, are answered in order. */
static void script_pipelined(struct client *c)
{
    char a[128], b[256];
    size_t n = request(a, sizeof(a), 0, 0);
    client_send(c, a, n);
    sleep_ms(50);
    n = request(a, sizeof(a), 1, 0);
    client_send(c, a, n);
    sleep_ms(20);
    n = request(b, sizeof(b), 2, 0);
    n += request(b + n, sizeof(b) - n, 3, 0);
    client_send(c, b, n);
    client_expect_responses(c, 0, 4);
    client_close(c, false);
}

static void test_pipelined_while_answering(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_pipelined;
        run(&t, c, tls, true, 200);
        CHECK_INT(c->responses, 4);
        CHECK_INT(c->wrong, 0);
        CHECK_INT(t.requests, 4);
        CHECK_INT(t.completed, 4);
        free(c);
    }
}

/* A client that half-closes after its requests gets every answer, then the close. */
static void script_half_close(struct client *c)
{
    char b[256];
    size_t n = request(b, sizeof(b), 0, 0);
    n += request(b + n, sizeof(b) - n, 1, 0);
    client_send(c, b, n);
    if (c->tls) {
        tls_close_notify(c->s);
        tls_flush(c);
    }
    shutdown(c->fd, SHUT_WR);
    client_expect_responses(c, 0, 2);
    client_expect_eof(c);
    client_close(c, false);
}

static void test_half_close_answered(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_half_close;
        run(&t, c, tls, true, 200);
        CHECK_INT(c->responses, 2);
        CHECK(c->eof_at_end);
        CHECK_INT(t.completed, 2);
        free(c);
    }
}

/* A reset while a request is answered ends the exchange at once (no write needed). */
static void script_reset(struct client *c)
{
    char b[128];
    size_t n = request(b, sizeof(b), 0, 0);
    client_send(c, b, n);
    sleep_ms(100);
    client_close(c, true);
    sleep_ms(300);
}

static void test_reset_ends_exchange(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_reset;
        run(&t, c, tls, true, 0); /* held until the client is gone */
        CHECK_INT(t.gone_at_done, 1);
        CHECK_INT(t.completed, 1);
        CHECK_INT(t.last_status, 499);
        free(c);
    }
}

/* 300 requests of 1 KiB sent at once while the first is held: more than the server
 * holds, so it stops reading and starts again; every one is answered, in order. */
#define BURST 300
static void script_burst(struct client *c)
{
    size_t cap = (BURST + 1) * 1200;
    char *b = malloc(cap);
    size_t n = request(b, cap, 0, 0);
    client_send(c, b, n);
    n = 0;
    for (int i = 1; i <= BURST; i++)
        n += request(b + n, cap - n, i, 1000);
    client_send(c, b, n);
    free(b);
    client_expect_responses(c, 0, BURST + 1);
    client_close(c, false);
}

static void test_burst_answered_in_order(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_burst;
        run(&t, c, tls, true, 300);
        CHECK_INT(c->responses, BURST + 1);
        CHECK_INT(c->wrong, 0);
        CHECK_INT(t.requests, BURST + 1);
        free(c);
    }
}

/*
 * A client that sends without reading, while the first request is held: the kernel
 * takes what the server holds (64 KiB) plus the sockets' buffers, then no more. Without
 * a bound the server would read all of the 16 MiB offered. Then the held request is
 * answered, and so is every request sent meanwhile.
 */
static void script_bound(struct client *c)
{
    char b[1200];
    size_t n = request(b, sizeof(b), 0, 0);
    client_send(c, b, n);
    int rank = 1;
    size_t off = 0;
    n = request(b, sizeof(b), rank, 1000);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms > 1000 || c->sent_ahead > 16L << 20) break;
        ssize_t w = send(c->fd, b + off, n - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, 50);
            continue;
        }
        c->sent_ahead += w;
        off += (size_t)w;
        if (off == n) {
            off = 0;
            n = request(b, sizeof(b), ++rank, 1000);
        }
    }
    uv_async_send(&c->t->release_async);
    if (off > 0) { /* the rest of a request cut short, once the server reads again */
        send_all(c->fd, b + off, n - off);
        rank++;
    }
    client_expect_responses(c, 0, rank);
    client_close(c, false);
}

static void test_bound_on_held_input(void)
{
    struct test t;
    struct client *c = calloc(1, sizeof(*c));
    c->script = script_bound;
    c->sndbuf = 8192;
    run(&t, c, false, true, 0);
    fprintf(stderr, "a client that does not read: the kernel took %ld bytes\n", c->sent_ahead);
    CHECK(c->sent_ahead > 64 * 1024);
    CHECK(c->sent_ahead < 4L << 20);
    CHECK_INT(c->wrong, 0);
    CHECK_INT(c->responses, t.requests);
    free(c);
}

/* --- Request bodies ---------------------------------------------------------------------- */

#define BODY_SIZE (300 * 1024) /* more than the server holds (64 KiB) */

/* The body's bytes [from, from + len) into buf. */
static void body_fill(char *buf, uint64_t from, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)body_byte(from + i);
}

/* POST /<rank> with a Content-Length body of `size` bytes, sent in pieces; mode is the
 * X-Mode header ("" for none). */
static void send_body_request(struct client *c, int rank, size_t size, const char *mode,
                              bool expect_continue)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "POST /%d HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n%s%s%s%s\r\n", rank,
                     size, *mode ? "X-Mode: " : "", mode, *mode ? "\r\n" : "",
                     expect_continue ? "Expect: 100-continue\r\n" : "");
    client_send(c, head, (size_t)n);
    if (expect_continue) {
        /* The body goes only after the server's word. */
        char *end;
        while ((end = memmem(c->in, c->in_len, "\r\n\r\n", 4)) == NULL)
            if (!client_fill(c)) {
                client_fail(c, "no 100 Continue");
                return;
            }
        size_t len = (size_t)(end - c->in) + 4;
        if (memcmp(c->in, "HTTP/1.1 100 Continue\r\n", 23) != 0)
            client_fail(c, "the first answer to Expect: 100-continue is not 100 Continue");
        memmove(c->in, c->in + len, c->in_len - len);
        c->in_len -= len;
    }
    char buf[20000];
    for (size_t off = 0; off < size;) {
        size_t k = size - off < sizeof(buf) ? size - off : sizeof(buf);
        body_fill(buf, off, k);
        client_send(c, buf, k);
        off += k;
    }
}

/* A Content-Length body, then a GET on the same connection: both answered, in order. */
static void script_body(struct client *c)
{
    char b[128];
    send_body_request(c, 0, BODY_SIZE, "", false);
    size_t n = request(b, sizeof(b), 1, 0);
    client_send(c, b, n);
    client_expect_responses(c, 0, 2);
    client_close(c, false);
}

static void test_body_read_then_next_request(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_body;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 2);
        CHECK_INT(t.bodies_ok, 1);
        CHECK(t.body_bytes == BODY_SIZE);
        CHECK_INT(t.completed, 2);
        free(c);
    }
}

/* A chunked body in chunks of several sizes, sent with pauses, then a pipelined GET. */
static void script_chunked(struct client *c)
{
    static const char head[] =
        "PUT /0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-Mode: pause\r\n\r\n";
    client_send(c, head, sizeof(head) - 1);
    static const size_t sizes[] = {1, 17, 4096, 70000, 3, 65536, 100000};
    char *buf = malloc(100000 + 64);
    uint64_t off = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
        int n = snprintf(buf, 32, "%zx\r\n", sizes[i]);
        body_fill(buf + n, off, sizes[i]);
        memcpy(buf + n + sizes[i], "\r\n", 2);
        client_send(c, buf, (size_t)n + sizes[i] + 2);
        off += sizes[i];
        if (i % 2 == 0) sleep_ms(10);
    }
    char b[128];
    size_t n = request(b, sizeof(b), 1, 0);
    memcpy(buf, "0\r\n\r\n", 5);
    memcpy(buf + 5, b, n); /* the last chunk and the next request in one write */
    client_send(c, buf, 5 + n);
    free(buf);
    client_expect_responses(c, 0, 2);
    client_close(c, false);
}

static void test_body_chunked_with_pauses(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_chunked;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 2);
        CHECK_INT(t.bodies_ok, 1);
        CHECK(t.body_bytes == 1 + 17 + 4096 + 70000 + 3 + 65536 + 100000);
        CHECK(t.pauses > 3);
        free(c);
    }
}

/* A chunked body with trailers (which the server reads past and does not keep), then a
 * pipelined request: both answered. */
static void script_trailers(struct client *c)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "PUT /0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n");
    body_fill(buf + n, 0, 3);
    n += 3;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                  "\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n");
    n += (int)request(buf + n, sizeof(buf) - (size_t)n, 1, 0);
    client_send(c, buf, (size_t)n);
    client_expect_responses(c, 0, 2);
    client_close(c, false);
}

static void test_body_chunked_trailers(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_trailers;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 2);
        CHECK_INT(t.bodies_ok, 1);
        CHECK(t.body_bytes == 3);
        free(c);
    }
}

/* Expect: 100-continue: the client hears 100 before it sends; the body is read. */
static void script_continue(struct client *c)
{
    send_body_request(c, 0, 5000, "", true);
    client_expect_responses(c, 0, 1);
    client_close(c, false);
}

static void test_body_expect_continue(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_continue;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 1);
        CHECK_INT(t.bodies_ok, 1);
        free(c);
    }
}

/* A body the handler leaves unread: answered, then the connection closes. */
static void script_unread(struct client *c)
{
    send_body_request(c, 0, 1000, "unread", false);
    client_expect_responses(c, 0, 1);
    client_expect_eof(c);
    client_close(c, false);
}

static void test_body_unread_closes(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_unread;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 1);
        CHECK(c->eof_at_end);
        CHECK(t.body_bytes == 0);
        free(c);
    }
}

/* A big body refused unread while the client still sends it: the server drops what
 * comes instead of resetting the connection, so the client reads the whole answer after
 * it has sent its whole body. */
static void script_unread_big(struct client *c)
{
    send_body_request(c, 0, 1 << 20, "unread", false);
    client_expect_responses(c, 0, 1);
    client_close(c, false);
}

static void test_body_refused_unread_is_not_reset(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_unread_big;
        c->sndbuf = 16384;
        run(&t, c, tls, false, 0);
        CHECK_INT(c->responses, 1);
        CHECK(t.body_bytes == 0);
        free(c);
    }
}

/* A client that goes away in the middle of a body: the handler hears it (gone). */
static void script_body_cut(struct client *c)
{
    char head[] = "POST /0 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n";
    client_send(c, head, sizeof(head) - 1);
    char buf[30000];
    body_fill(buf, 0, sizeof(buf));
    client_send(c, buf, sizeof(buf));
    sleep_ms(100);
    client_close(c, false);
    sleep_ms(200);
}

static void test_body_cut_short(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct test t;
        struct client *c = calloc(1, sizeof(*c));
        c->script = script_body_cut;
        run(&t, c, tls, false, 0);
        CHECK_INT(t.bodies_ok, 0);
        CHECK(t.body_bytes == 30000);
        CHECK_INT(t.completed, 1);
        CHECK_INT(t.last_status, 499);
        free(c);
    }
}

int main(void)
{
    alarm(120);
    certs_make();
    RUN(test_pipelined_while_answering);
    RUN(test_half_close_answered);
    RUN(test_reset_ends_exchange);
    RUN(test_burst_answered_in_order);
    RUN(test_bound_on_held_input);
    RUN(test_body_read_then_next_request);
    RUN(test_body_chunked_with_pauses);
    RUN(test_body_chunked_trailers);
    RUN(test_body_expect_continue);
    RUN(test_body_unread_closes);
    RUN(test_body_refused_unread_is_not_reset);
    RUN(test_body_cut_short);
    certs_remove();
    return check_summary();
}
