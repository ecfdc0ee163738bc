/*
 * test_chain.c: failover over an ordered list of upstream bases (net/chain.h), against
 * scripted upstreams on the fake network (fakenet.h).
 *
 * Two scripted upstreams, A and B, answer every request as the test says (a status and a
 * body, whole or cut short); a third base is refused at connect (the fake network lets
 * nothing through to a port nobody listens on). Each request runs until its on_done, and
 * the test checks which heads the consumer saw, which upstream was asked, and what the
 * process-wide host table says (backoff, counters, metrics). Bases carry a path prefix of
 * their test (http://127.0.0.1:PORT/<test>) so that no test sees another's table entry.
 * Each test ends by closing everything and checking uv_loop_close() == 0.
 */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/bytes.h"
#include "check.h"
#include "fakenet.h"
#include "net/chain.h"
#include "net/upstream.h"

#define WAIT_MS 20000

/* --- Scripted upstreams ------------------------------------------------------------ */

struct upstream {
    struct fakenet_server *srv;
    char base[96];
    int status;
    bool cut; /* the body stops half-way and the connection ends */
    char reply[512];
};

static const char body_text[] = "the body of the answer";

static void upstream_answer(void *ud, const char *head, size_t len, struct fakenet_reply *out)
{
    struct upstream *u = ud;
    size_t body_len = sizeof(body_text) - 1;
    int n = snprintf(u->reply, sizeof(u->reply),
                     "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nX-From: %s\r\n\r\n%.*s", u->status,
                     body_len, u->base, (int)(u->cut ? body_len / 2 : body_len), body_text);
    out->data = u->reply;
    out->len = (size_t)n;
}

struct env {
    uv_loop_t loop;
    struct upstream_pool *pool;
    struct upstream a, b;
    char refused[96];
};

static void env_init(struct env *e, const char *test)
{
    memset(e, 0, sizeof(*e));
    CHECK_INT(uv_loop_init(&e->loop), 0);
    struct upstream_pool_opts po = {.connect_timeout_ms = 5000, .io_timeout_ms = 5000};
    e->pool = upstream_pool_new(&e->loop, &po);
    CHECK(e->pool != NULL);
    struct upstream *us[] = {&e->a, &e->b};
    for (int i = 0; i < 2; i++) {
        CHECK_INT(fakenet_server_start(&e->loop, upstream_answer, us[i], &us[i]->srv), 0);
        snprintf(us[i]->base, sizeof(us[i]->base), "http://127.0.0.1:%u/%s",
                 (unsigned)fakenet_server_port(us[i]->srv), test);
        us[i]->status = 200;
    }
    snprintf(e->refused, sizeof(e->refused), "http://127.0.0.1:1/%s", test);
}

static void env_finish(struct env *e)
{
    upstream_pool_close(e->pool);
    fakenet_server_stop(e->a.srv);
    fakenet_server_stop(e->b.srv);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&e->loop), 0);
}

/* --- A request and what its consumer saw ------------------------------------------- */

struct call {
    struct chain_req *req;
    int heads, dones;
    int status;
    int err;
    char from[96];   /* the X-From of the head: the base that answered */
    char base[96];   /* chain_base at on_done */
    char error[512]; /* chain_error_message at on_done */
    char body[256];
    size_t body_len;
    bool cancel_in_head, cancel_in_done;
};

static void call_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                      int64_t content_length)
{
    struct call *c = ud;
    c->heads++;
    c->status = status;
    const struct http_header *h = http_header_find(hdrs, n, "X-From");
    if (h != NULL) snprintf(c->from, sizeof(c->from), "%.*s", (int)h->value_len, h->value);
    if (c->cancel_in_head) chain_cancel(c->req);
}

static void call_body(void *ud, const char *data, size_t len)
{
    struct call *c = ud;
    size_t room = sizeof(c->body) - 1 - c->body_len;
    size_t n = len < room ? len : room;
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = '\0';
}

static void call_done(void *ud, int err)
{
    struct call *c = ud;
    c->dones++;
    c->err = err;
    snprintf(c->base, sizeof(c->base), "%s", chain_base(c->req));
    snprintf(c->error, sizeof(c->error), "%s", chain_error_message(c->req));
    if (c->cancel_in_done) chain_cancel(c->req); /* a no-op, as upstream_cancel is there */
}

static const struct upstream_callbacks call_cbs = {call_head, call_body, call_done};

static bool call_finished(void *arg)
{
    return ((struct call *)arg)->dones > 0;
}

static void start(struct env *e, struct call *c, const char *const *bases, size_t n)
{
    struct chain_spec spec = {.method = "GET", .bases = bases, .n_bases = n, .target = "/v2/"};
    CHECK_INT(chain_request(e->pool, &spec, &call_cbs, c, &c->req), 0);
}

/* GET /v2/ from the bases in order, waited for. */
static void get(struct env *e, struct call *c, const char *const *bases, size_t n)
{
    memset(c, 0, sizeof(*c));
    start(e, c, bases, n);
    CHECK(fakenet_run_until(&e->loop, call_finished, c, WAIT_MS));
    CHECK_INT(c->dones, 1);
}

/* --- Host statistics ---------------------------------------------------------------- */

struct host_find {
    const char *base;
    struct chain_host_stats st;
    bool found;
};

static void host_visit(void *ud, const char *base, const struct chain_host_stats *st)
{
    struct host_find *hf = ud;
    if (strcmp(base, hf->base) != 0) return;
    hf->st = *st;
    hf->found = true;
}

static struct chain_host_stats host_stats(const char *base)
{
    struct host_find hf = {.base = base};
    chain_hosts_foreach(host_visit, &hf);
    CHECK(hf.found);
    return hf.st;
}

static bool backoff_over(void *base)
{
    return !chain_backing_off(base);
}

/* --- Tests ------------------------------------------------------------------------- */

/* A base that refuses the connection is skipped: the next one answers. */
static void test_refused_then_next(void)
{
    struct env e;
    struct call c;
    env_init(&e, "refused");
    const char *bases[] = {e.refused, e.b.base};
    get(&e, &c, bases, 2);
    CHECK_INT(c.err, 0);
    CHECK_INT(c.heads, 1);
    CHECK_INT(c.status, 200);
    CHECK_STR(c.from, e.b.base);
    CHECK_STR(c.base, e.b.base);
    CHECK_STR(c.body, body_text);
    CHECK_INT(fakenet_server_requests(e.b.srv), 1);
    CHECK(chain_backing_off(e.refused));
    CHECK(!chain_backing_off(e.b.base));
    env_finish(&e);
}

/*
 * A 5xx before the head is handed over moves on to the next base; the consumer sees only
 * the head that answered. When the last base answers 5xx too, that head is the answer.
 */
static void test_5xx_fails_over(void)
{
    struct env e;
    struct call c1, c2;
    env_init(&e, "5xx");
    e.a.status = 503;
    const char *bases[] = {e.a.base, e.b.base};
    get(&e, &c1, bases, 2);
    CHECK_INT(c1.err, 0);
    CHECK_INT(c1.heads, 1);
    CHECK_INT(c1.status, 200);
    CHECK_STR(c1.from, e.b.base);
    CHECK_STR(c1.body, body_text);
    CHECK_INT(fakenet_server_requests(e.a.srv), 1);
    CHECK_INT(fakenet_server_requests(e.b.srv), 1);
    CHECK(chain_backing_off(e.a.base));

    /* (A backs off now: B is asked first.) */
    e.b.status = 500;
    get(&e, &c2, bases, 2);
    CHECK_INT(c2.heads, 1);
    CHECK_INT(c2.status, 503);
    CHECK_STR(c2.from, e.a.base);
    CHECK_INT(c2.err, 0);
    CHECK_INT(fakenet_server_requests(e.a.srv), 2);
    CHECK_INT(fakenet_server_requests(e.b.srv), 2);
    CHECK(chain_backing_off(e.b.base));
    env_finish(&e);
}

/* Every base unreachable: no head, the last failure, named. */
static void test_all_refused(void)
{
    struct env e;
    struct call c;
    env_init(&e, "all-refused");
    char other[96];
    snprintf(other, sizeof(other), "http://127.0.0.1:2/all-refused");
    const char *bases[] = {e.refused, other};
    get(&e, &c, bases, 2);
    CHECK_INT(c.heads, 0);
    CHECK_INT(c.err, UV_ECONNREFUSED);
    CHECK_STR(c.base, other);
    CHECK_CONTAINS(c.error, "127.0.0.1:2");
    env_finish(&e);
}

/*
 * Once a head was handed over there is no failover: a body that breaks off is the
 * consumer's error, the next base is not asked, and the base does not back off.
 */
static void test_no_failover_after_head(void)
{
    struct env e;
    struct call c;
    env_init(&e, "after-head");
    e.a.cut = true;
    const char *bases[] = {e.a.base, e.b.base};
    get(&e, &c, bases, 2);
    CHECK_INT(c.heads, 1);
    CHECK_INT(c.status, 200);
    CHECK_STR(c.from, e.a.base);
    CHECK_INT(c.err, UV_ECONNRESET);
    CHECK_INT(c.body_len, (sizeof(body_text) - 1) / 2);
    CHECK_INT(fakenet_server_requests(e.b.srv), 0);
    CHECK(!chain_backing_off(e.a.base));
    CHECK_INT(host_stats(e.a.base).errors, 1);
    env_finish(&e);
}

/*
 * A base that failed is tried last while it backs off; it is first again once it
 * answered (when the others failed and it was asked), or once its backoff ran out.
 */
static void test_backoff(void)
{
    struct env e;
    struct call c;
    env_init(&e, "backoff");
    const char *bases[] = {e.a.base, e.b.base};
    e.a.status = 502;
    get(&e, &c, bases, 2);
    CHECK_STR(c.from, e.b.base);
    CHECK(chain_backing_off(e.a.base));

    /* A backs off: B first, and A is not asked. */
    e.a.status = 200;
    get(&e, &c, bases, 2);
    CHECK_STR(c.from, e.b.base);
    CHECK_INT(fakenet_server_requests(e.a.srv), 1);
    CHECK_INT(fakenet_server_requests(e.b.srv), 2);

    /* B fails: A, last, answers, and its backoff ends. */
    e.b.status = 503;
    get(&e, &c, bases, 2);
    CHECK_STR(c.from, e.a.base);
    CHECK_INT(c.status, 200);
    CHECK(!chain_backing_off(e.a.base));
    CHECK(chain_backing_off(e.b.base));

    /* A first again; B, backing off, is not asked. */
    e.b.status = 200;
    get(&e, &c, bases, 2);
    CHECK_STR(c.from, e.a.base);
    CHECK_INT(fakenet_server_requests(e.a.srv), 3);
    CHECK_INT(fakenet_server_requests(e.b.srv), 3);

    /* B's backoff (1 s after one failure) runs out: B is in its place again. */
    const char *b_first[] = {e.b.base, e.a.base};
    CHECK(fakenet_run_until(&e.loop, backoff_over, e.b.base, 5000));
    get(&e, &c, b_first, 2);
    CHECK_STR(c.from, e.b.base);
    CHECK_INT(fakenet_server_requests(e.b.srv), 4);
    env_finish(&e);
}

static bool a_idle(void *arg)
{
    struct env *e = arg;
    return fakenet_server_connections(e->a.srv) == 0 && fakenet_server_requests(e->a.srv) > 0;
}

/*
 * chain_cancel follows upstream_cancel's rules: from on_head no callback comes after it
 * (and the connection is closed); from on_done it is a no-op.
 */
static void test_cancel(void)
{
    struct env e;
    struct call c;
    env_init(&e, "cancel");
    const char *bases[] = {e.a.base, e.b.base};
    memset(&c, 0, sizeof(c));
    c.cancel_in_head = true;
    start(&e, &c, bases, 2);
    CHECK(fakenet_run_until(&e.loop, a_idle, &e, WAIT_MS));
    CHECK_INT(c.heads, 1);
    CHECK_INT(c.dones, 0);
    CHECK_INT(c.body_len, 0);

    memset(&c, 0, sizeof(c));
    c.cancel_in_done = true;
    start(&e, &c, bases, 2);
    CHECK(fakenet_run_until(&e.loop, call_finished, &c, WAIT_MS));
    CHECK_INT(c.dones, 1);
    CHECK_INT(c.err, 0);
    /* The same after a failure that ends with every base failed (refused). */
    const char *refused[] = {e.refused};
    memset(&c, 0, sizeof(c));
    c.cancel_in_done = true;
    start(&e, &c, refused, 1);
    CHECK(fakenet_run_until(&e.loop, call_finished, &c, WAIT_MS));
    CHECK_INT(c.dones, 1);
    CHECK_INT(c.err, UV_ECONNREFUSED);
    /* And after a 5xx whose next base cannot even start (https on a pool without TLS). */
    char https[96];
    snprintf(https, sizeof(https), "https://127.0.0.1:1/cancel");
    const char *no_next[] = {e.a.base, https};
    e.a.status = 503;
    memset(&c, 0, sizeof(c));
    c.cancel_in_done = true;
    start(&e, &c, no_next, 2);
    CHECK(fakenet_run_until(&e.loop, call_finished, &c, WAIT_MS));
    CHECK_INT(c.dones, 1);
    CHECK_INT(c.heads, 0);
    CHECK_INT(c.err, UV_EPROTO);
    CHECK_CONTAINS(c.error, "answered 503"); /* the failure that ended it, not the start */
    env_finish(&e);
}

/* Counters per base, and their lines in chain_render_metrics. */
static void test_metrics(void)
{
    struct env e;
    struct call c;
    env_init(&e, "metrics");
    const char *bases[] = {e.refused, e.a.base, e.b.base};
    e.a.status = 500;
    get(&e, &c, bases, 3); /* refused, A: 500, B: 200 */
    e.a.status = 200;
    const char *a_only[] = {e.a.base};
    get(&e, &c, a_only, 1); /* A: 200 (only base, although backing off) */
    struct chain_host_stats a = host_stats(e.a.base), b = host_stats(e.b.base);
    size_t body_len = sizeof(body_text) - 1;
    CHECK_INT(a.requests, 2);
    CHECK_INT(a.errors, 1);
    CHECK_INT(a.bytes, body_len); /* the 500's body was never read */
    CHECK_INT(a.latency_count, 2);
    CHECK_INT(b.requests, 1);
    CHECK_INT(b.errors, 0);
    CHECK_INT(b.bytes, body_len);
    CHECK_INT(b.latency_count, 1);
    CHECK(a.last_ok_ms > 0 && chain_last_answer_ms() >= a.last_ok_ms);
    struct chain_host_stats refused = host_stats(e.refused);
    CHECK_INT(refused.requests, 1);
    CHECK_INT(refused.errors, 1);
    CHECK_INT(refused.latency_count, 0); /* no head, no response time */
    CHECK_INT(refused.last_ok_ms, 0);

    char buf[65536], line[256];
    struct textbuf out;
    textbuf_init(&out, buf, sizeof(buf));
    chain_render_metrics(NULL, &out);
    CHECK(!out.cut);
    CHECK_CONTAINS(buf, "# TYPE content_cache_upstream_requests_total counter\n");
    CHECK_CONTAINS(buf, "# TYPE content_cache_upstream_response_seconds histogram\n");
    snprintf(line, sizeof(line), "content_cache_upstream_requests_total{upstream=\"%s\"} 2\n",
             e.a.base);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line), "content_cache_upstream_errors_total{upstream=\"%s\"} 1\n",
             e.a.base);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line), "content_cache_upstream_errors_total{upstream=\"%s\"} 0\n",
             e.b.base);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line),
             "content_cache_upstream_fetched_bytes_total{upstream=\"%s\"} %zu\n", e.b.base,
             body_len);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line),
             "content_cache_upstream_response_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} 2\n",
             e.a.base);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line),
             "content_cache_upstream_response_seconds_count{upstream=\"%s\"} 2\n", e.a.base);
    CHECK_CONTAINS(buf, line);
    /* The buckets are cumulative: the 10 s one holds both answers of a fast fake. */
    snprintf(line, sizeof(line),
             "content_cache_upstream_response_seconds_bucket{upstream=\"%s\",le=\"10\"} 2\n",
             e.a.base);
    CHECK_CONTAINS(buf, line);
    snprintf(line, sizeof(line), "content_cache_upstream_errors_total{upstream=\"%s\"} 1\n",
             e.refused);
    CHECK_CONTAINS(buf, line);
    env_finish(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    alarm(120);
    RUN(test_refused_then_next);
    RUN(test_5xx_fails_over);
    RUN(test_all_refused);
    RUN(test_no_failover_after_head);
    RUN(test_backoff);
    RUN(test_cancel);
    RUN(test_metrics);
    return check_summary();
}
