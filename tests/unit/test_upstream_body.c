/*
 * test_upstream_body.c: request bodies of the upstream client (upstream.h), sent to the
 * core's own server (server.h), which reads them, both on one loop on 127.0.0.1, over
 * http and https.
 *
 * The server's handler reads each body (checking every byte against a pattern) and
 * answers 201 "got <n> ok" at its end, or, asked to by the request, refuses at once
 * without reading it. The client gives the body in pieces, the next from the callback of
 * the last. Covered: Content-Length and chunked bodies, a server that pauses while it
 * reads, a refusal before the body's end (the answer is the response, no callback after
 * on_done), "Content-Length: 0" for a POST without a body, and the misuses the header
 * names.
 */
#include "certs.h"
#include "check.h"
#include "net/server.h"
#include "net/tls.h"
#include "net/upstream.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char pattern(uint64_t i)
{
    return (unsigned char)((i * 13) ^ (i >> 9));
}

/* --- The server: reads bodies, or refuses them --------------------------------------- */

struct reader {
    struct env *e;
    uint64_t got;
    bool bad;
    bool paused_once;
};

struct env {
    uv_loop_t loop;
    struct http_server *srv;
    int port;
    bool tls;
    struct upstream_pool *pool;
    uv_timer_t resume; /* the server's reader resumes a paused body */
    struct http_exchange *paused;
    int bodies_read;
    char last_content_length[32]; /* of a request without a body: its header, or "none" */
};

static void body_resume(uv_timer_t *t)
{
    struct env *e = t->data;
    if (e->paused != NULL) http_req_body_resume(e->paused);
    e->paused = NULL;
}

static void body_data(struct http_exchange *x, const char *data, size_t len, void *arg)
{
    struct reader *r = arg;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != pattern(r->got + i)) r->bad = true;
    r->got += len;
    if (!r->paused_once && r->got > 200 * 1024) {
        /* The server stops reading for a while: the client must wait. */
        r->paused_once = true;
        http_req_body_pause(x);
        r->e->paused = x;
        uv_timer_start(&r->e->resume, body_resume, 100, 0);
    }
}

static void body_end(struct http_exchange *x, void *arg)
{
    struct reader *r = arg;
    char text[64];
    int n = snprintf(text, sizeof(text), "got %llu %s", (unsigned long long)r->got,
                     r->bad ? "bad" : "ok");
    r->e->bodies_read++;
    free(r);
    http_exchange_on_gone(x, NULL, NULL);
    http_respond_full(x, 201, NULL, 0, text, (size_t)n);
}

static void body_gone(struct http_exchange *x, void *arg)
{
    struct reader *r = arg;
    if (r->e->paused == x) r->e->paused = NULL;
    free(r);
    http_respond_end(x);
}

static void on_request(struct http_exchange *x, void *ud)
{
    struct env *e = ud;
    if (http_req_header(x, "X-Refuse") != NULL) {
        static const struct http_header h = {"WWW-Authenticate", 16, "Basic", 5};
        http_respond_full(x, 401, &h, 1, "no", 2);
        return;
    }
    if (!http_req_has_body(x)) {
        const struct http_header *cl = http_req_header(x, "Content-Length");
        snprintf(e->last_content_length, sizeof(e->last_content_length), "%.*s",
                 cl ? (int)cl->value_len : 4, cl ? cl->value : "none");
        http_respond_full(x, 200, NULL, 0, "no body", 7);
        return;
    }
    struct reader *r = calloc(1, sizeof(*r));
    r->e = e;
    static const struct http_body_callbacks cbs = {body_data, body_end};
    http_exchange_on_gone(x, body_gone, r);
    CHECK_INT(http_req_body_start(x, &cbs, r), 0);
}

/* --- The client: gives a body in pieces ---------------------------------------------- */

struct call {
    struct env *e;
    struct upstream_req *req;
    uint64_t total;       /* the body's size */
    uint64_t given;       /* given so far */
    const size_t *pieces; /* sizes, cycled */
    size_t n_pieces, next;
    char *buf;
    int written;       /* piece callbacks */
    int after_done;    /* piece callbacks after on_done: must stay 0 */
    bool stop_on_head; /* give no more once the head came */
    int status;
    char body[256];
    size_t body_len;
    int dones, err;
    char errmsg[256];
};

static void give_next(struct call *c);

static void piece_written(void *arg, int status)
{
    struct call *c = arg;
    CHECK_INT(status, 0);
    c->written++;
    if (c->dones > 0) c->after_done++;
    give_next(c);
}

static void give_next(struct call *c)
{
    if (c->dones > 0 || (c->stop_on_head && c->status > 0)) return;
    if (c->given == c->total) {
        CHECK_INT(upstream_end_body(c->req), 0);
        return;
    }
    size_t n = c->pieces[c->next++ % c->n_pieces];
    if (n > c->total - c->given) n = (size_t)(c->total - c->given);
    for (size_t i = 0; i < n; i++)
        c->buf[i] = (char)pattern(c->given + i);
    CHECK_INT(upstream_send_body(c->req, c->buf, n, piece_written, c), 0);
    /* A second piece before the first is written is refused. */
    CHECK_INT(upstream_send_body(c->req, c->buf, 1, piece_written, c), UV_EINVAL);
    c->given += n;
}

static void call_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                      int64_t content_length)
{
    struct call *c = ud;
    c->status = status;
}

static void call_body(void *ud, const char *data, size_t len)
{
    struct call *c = ud;
    size_t room = sizeof(c->body) - 1 - c->body_len;
    size_t k = len < room ? len : room;
    memcpy(c->body + c->body_len, data, k);
    c->body_len += k;
    c->body[c->body_len] = '\0';
}

static void call_done(void *ud, int err)
{
    struct call *c = ud;
    c->dones++;
    c->err = err;
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", upstream_error_message(c->req));
}

static const struct upstream_callbacks call_cbs = {call_head, call_body, call_done};

/* --- The environment ---------------------------------------------------------------- */

static void env_init(struct env *e, bool tls)
{
    memset(e, 0, sizeof(*e));
    e->tls = tls;
    CHECK_INT(uv_loop_init(&e->loop), 0);
    char err[256] = "";
    struct http_server_opts opts = {.on_request = on_request, .ud = e};
    if (tls)
        CHECK_INT(tls_server_config_new(cert_path("server.pem"), cert_path("server.key"), "tls1.2",
                                        &opts.tls, err, sizeof(err)),
                  0);
    CHECK_INT(http_server_listen(&e->loop, "127.0.0.1:0", &opts, &e->srv, err, sizeof(err)), 0);
    tls_config_free(opts.tls);
    e->port = atoi(strrchr(http_server_address(e->srv), ':') + 1);
    struct upstream_pool_opts po = {.io_timeout_ms = 5000};
    if (tls) {
        const char *cas[] = {cert_path("ca.pem")};
        CHECK_INT(tls_client_config_new(cas, 1, false, &po.tls, err, sizeof(err)), 0);
    }
    e->pool = upstream_pool_new(&e->loop, &po);
    tls_config_free(po.tls);
    uv_timer_init(&e->loop, &e->resume);
    e->resume.data = e;
}

static void env_finish(struct env *e)
{
    upstream_pool_close(e->pool);
    http_server_shutdown(e->srv, 0, NULL, NULL);
    uv_close((uv_handle_t *)&e->resume, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&e->loop), 0);
}

static void on_deadline(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs the loop until the call is done (20 s at most). */
static void wait_done(struct env *e, struct call *c)
{
    uv_timer_t deadline;
    bool late = false;
    uv_timer_init(&e->loop, &deadline);
    deadline.data = &late;
    uv_timer_start(&deadline, on_deadline, 20000, 0);
    while (c->dones == 0 && !late)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    CHECK_INT(c->dones, 1);
}

/* Sends `method` with a body of `total` bytes in pieces (chunked, or with its length)
 * and waits for the response; stop_on_head: give no more once it has come. */
static void send_body(struct env *e, struct call *c, const char *method, uint64_t total,
                      bool chunked, const size_t *pieces, size_t n_pieces,
                      const struct upstream_header *h, size_t n_h, bool stop_on_head)
{
    char url[128];
    snprintf(url, sizeof(url), "%s://127.0.0.1:%d/v2/app/blobs/uploads/x",
             e->tls ? "https" : "http", e->port);
    memset(c, 0, sizeof(*c));
    c->e = e;
    c->stop_on_head = stop_on_head;
    c->total = total;
    c->pieces = pieces;
    c->n_pieces = n_pieces;
    size_t max = 0;
    for (size_t i = 0; i < n_pieces; i++)
        if (pieces[i] > max) max = pieces[i];
    c->buf = malloc(max);
    struct upstream_request_spec spec = {
        .method = method,
        .url = url,
        .headers = h,
        .n_headers = n_h,
        .has_body = true,
        .body_length = chunked ? -1 : (int64_t)total,
    };
    CHECK_INT(upstream_request(e->pool, &spec, &call_cbs, c, &c->req), 0);
    give_next(c); /* the first piece waits for the connection */
    wait_done(e, c);
    free(c->buf);
}

/* --- Tests ---------------------------------------------------------------------------- */

static const size_t piece_64k[] = {64 * 1024};
static const size_t piece_mixed[] = {1, 4000, 70000, 17, 16384, 100000};

static void test_content_length_body(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct env e;
        struct call c;
        env_init(&e, tls);
        send_body(&e, &c, "PUT", 1024 * 1024, false, piece_64k, 1, NULL, 0, false);
        CHECK_INT(c.err, 0);
        CHECK_INT(c.status, 201);
        CHECK_STR(c.body, "got 1048576 ok");
        CHECK_INT(c.written, 16);
        CHECK_INT(c.after_done, 0);
        CHECK_INT(e.bodies_read, 1);
        env_finish(&e);
    }
}

static void test_chunked_body(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct env e;
        struct call c;
        env_init(&e, tls);
        send_body(&e, &c, "PATCH", 700 * 1024 + 3, true, piece_mixed, 6, NULL, 0, false);
        CHECK_INT(c.err, 0);
        CHECK_INT(c.status, 201);
        CHECK_STR(c.body, "got 716803 ok");
        CHECK_INT(c.after_done, 0);
        env_finish(&e);
    }
}

/* A server that refuses before reading: its answer is the response; the client gives
 * no more once it has it, and no piece callback comes after on_done. */
static void test_refused_before_the_end(void)
{
    for (int tls = 0; tls <= 1; tls++) {
        struct env e;
        struct call c;
        env_init(&e, tls);
        struct upstream_header h = {"X-Refuse", "yes", false};
        send_body(&e, &c, "PUT", 8u << 20, false, piece_64k, 1, &h, 1, true);
        CHECK_INT(c.err, 0);
        CHECK_INT(c.status, 401);
        CHECK_STR(c.body, "no");
        CHECK(c.given < c.total);
        CHECK_INT(c.after_done, 0);
        CHECK_INT(e.bodies_read, 0);
        env_finish(&e);
    }
}

/* POST, PUT, PATCH without a body say Content-Length: 0; GET says nothing. */
static void test_no_body_says_zero(void)
{
    struct env e;
    env_init(&e, false);
    const char *methods[] = {"POST", "GET"};
    const char *want[] = {"0", "none"};
    for (int i = 0; i < 2; i++) {
        struct call c;
        memset(&c, 0, sizeof(c));
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/app/blobs/uploads/", e.port);
        struct upstream_request_spec spec = {.method = methods[i], .url = url};
        CHECK_INT(upstream_request(e.pool, &spec, &call_cbs, &c, &c.req), 0);
        wait_done(&e, &c);
        CHECK_INT(c.status, 200);
        CHECK_STR(e.last_content_length, want[i]);
    }
    env_finish(&e);
}

/* What the header calls misuse. */
static void test_misuse(void)
{
    struct env e;
    env_init(&e, false);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", e.port);
    struct call c;
    memset(&c, 0, sizeof(c));
    /* No body announced: no piece, no end. */
    struct upstream_request_spec get = {.method = "GET", .url = url};
    CHECK_INT(upstream_request(e.pool, &get, &call_cbs, &c, &c.req), 0);
    CHECK_INT(upstream_send_body(c.req, "x", 1, piece_written, &c), UV_EINVAL);
    CHECK_INT(upstream_end_body(c.req), UV_EINVAL);
    wait_done(&e, &c);
    /* Content-Length and Transfer-Encoding are the client's to write. */
    struct upstream_header cl = {"Content-Length", "5", false};
    struct upstream_request_spec bad = {
        .method = "PUT", .url = url, .headers = &cl, .n_headers = 1};
    struct upstream_req *r = NULL;
    CHECK_INT(upstream_request(e.pool, &bad, &call_cbs, &c, &r), UV_EINVAL);
    /* More than the length, an end before it, empty pieces. */
    memset(&c, 0, sizeof(c));
    struct upstream_request_spec put = {
        .method = "PUT", .url = url, .has_body = true, .body_length = 4};
    CHECK_INT(upstream_request(e.pool, &put, &call_cbs, &c, &c.req), 0);
    CHECK_INT(upstream_send_body(c.req, "hello", 5, piece_written, &c), UV_EINVAL);
    CHECK_INT(upstream_send_body(c.req, "", 0, piece_written, &c), UV_EINVAL);
    CHECK_INT(upstream_end_body(c.req), UV_EINVAL);
    upstream_cancel(c.req);
    uv_run(&e.loop, UV_RUN_NOWAIT);
    env_finish(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(120);
    certs_make();
    RUN(test_content_length_body);
    RUN(test_chunked_body);
    RUN(test_refused_before_the_end);
    RUN(test_no_body_says_zero);
    RUN(test_misuse);
    certs_remove();
    return check_summary();
}
