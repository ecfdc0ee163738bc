/*
 * fuzz_upstream_response.c: bytes as an upstream's answer, parsed by the real HTTP client
 * (upstream.c): status line, headers, Content-Length and chunked bodies, keep-alive,
 * redirects.
 *
 * A scripted server on 127.0.0.1 (fakenet.h) answers every connection with the input,
 * then closes its side. connect(2) is faked so that every other IPv4 address also lands
 * on that server and every host name resolves to 127.0.0.1: a redirect to anywhere
 * comes back with the same bytes (up to the redirect limit), and nothing leaves the
 * process.
 *
 * Input: byte 0 picks the request and how the body is consumed (bit 0: HEAD instead of
 * GET; bit 1: pause in every on_body and resume on the next loop iteration; bit 2:
 * cancel in the first on_body) and how the server slices the answer (bits 3-7: slices of
 * that many bytes, one per loop iteration; 0 sends it at once). The rest is the answer.
 *
 * Checked, besides the sanitizers: on_done comes exactly once (or never after a cancel),
 * last, after at most one on_head; no on_body for HEAD nor before on_head; a response
 * that ends with 0 had its head, and a body of its Content-Length when it gave one;
 * the error message and final URL are strings; every connection is closed and the pool
 * freed before the loop runs out.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "fakenet.h"
#include "harness.h"
#include "net/upstream.h"

static struct harness {
    uv_loop_t loop;
    struct fakenet_server *server;
    uv_idle_t resumer;
    char url[128];
    /* The current input's answer. */
    const char *answer;
    size_t answer_len;
    size_t chunk;
} h;

/* What one request saw. */
struct run {
    struct upstream_pool *pool;
    struct upstream_req *req;
    bool is_head;
    bool pause_each;
    bool cancel_in_body;
    bool cancelled;
    int heads;
    int dones;
    int done_err;
    int status;
    int64_t content_length;
    uint64_t body_bytes;
};

static void server_answer(void *ud, const char *head, size_t len, struct fakenet_reply *out)
{
    out->data = h.answer;
    out->len = h.answer_len;
    out->chunk = h.chunk;
}

static void resume_cb(uv_idle_t *idle)
{
    struct run *r = idle->data;
    uv_idle_stop(idle);
    if (r->dones == 0 && !r->cancelled) upstream_resume(r->req);
}

static void on_head(void *ud, int status, const struct http_header *hdrs, size_t n_hdrs,
                    int64_t content_length)
{
    struct run *r = ud;
    HARNESS_REQUIRE(r->dones == 0 && !r->cancelled, "no callback after the end");
    HARNESS_REQUIRE(r->heads == 0, "one head");
    HARNESS_REQUIRE(r->body_bytes == 0, "the head comes before the body");
    HARNESS_REQUIRE(status >= 100 && status <= 999, "a three-digit status");
    HARNESS_REQUIRE(content_length >= -1, "content_length is -1 or a length");
    for (size_t i = 0; i < n_hdrs; i++) {
        HARNESS_REQUIRE(hdrs[i].name != NULL || hdrs[i].name_len == 0, "header name span");
        HARNESS_REQUIRE(hdrs[i].value != NULL || hdrs[i].value_len == 0, "header value span");
        /* Touch every byte: ASan checks the spans. */
        volatile char sink = 0;
        for (size_t k = 0; k < hdrs[i].name_len; k++)
            sink ^= hdrs[i].name[k];
        for (size_t k = 0; k < hdrs[i].value_len; k++)
            sink ^= hdrs[i].value[k];
        (void)sink;
    }
    r->heads++;
    r->status = status;
    r->content_length = content_length;
}

static void on_body(void *ud, const char *data, size_t len)
{
    struct run *r = ud;
    HARNESS_REQUIRE(r->dones == 0 && !r->cancelled, "no callback after the end");
    HARNESS_REQUIRE(r->heads == 1, "a body after a head");
    HARNESS_REQUIRE(!r->is_head, "no body for HEAD");
    HARNESS_REQUIRE(len > 0 && data != NULL, "a body piece has bytes");
    volatile char sink = 0;
    for (size_t k = 0; k < len; k++)
        sink ^= data[k];
    (void)sink;
    r->body_bytes += len;
    if (r->content_length >= 0)
        HARNESS_REQUIRE(r->body_bytes <= (uint64_t)r->content_length,
                        "no more body than Content-Length");
    if (r->cancel_in_body) {
        r->cancelled = true;
        upstream_cancel(r->req);
        upstream_pool_close(r->pool);
        return;
    }
    if (r->pause_each) {
        upstream_pause(r->req);
        h.resumer.data = r;
        uv_idle_start(&h.resumer, resume_cb);
    }
}

static void on_done(void *ud, int err)
{
    struct run *r = ud;
    HARNESS_REQUIRE(!r->cancelled, "no on_done after a cancel");
    HARNESS_REQUIRE(r->dones == 0, "one on_done");
    HARNESS_REQUIRE(err <= 0, "0 or a negative error");
    r->dones++;
    r->done_err = err;
    HARNESS_REQUIRE(strlen(upstream_error_message(r->req)) < 65536, "the message is a string");
    HARNESS_REQUIRE(upstream_final_url(r->req) != NULL, "a final URL");
    HARNESS_REQUIRE(strlen(upstream_final_url(r->req)) < 65536, "the final URL is a string");
    if (err == 0) {
        HARNESS_REQUIRE(r->heads == 1, "a complete response had a head");
        if (!r->is_head && r->content_length >= 0 && r->status >= 200 && r->status != 204 &&
            r->status != 304)
            HARNESS_REQUIRE(r->body_bytes == (uint64_t)r->content_length,
                            "a complete body has its Content-Length");
    }
    uv_idle_stop(&h.resumer);
    upstream_pool_close(r->pool);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&h.loop) != 0) HARNESS_FAIL("uv_loop_init");
    if (fakenet_server_start(&h.loop, server_answer, NULL, &h.server) != 0)
        HARNESS_FAIL("cannot start the server");
    fakenet_redirect(fakenet_server_port(h.server));
    uv_idle_init(&h.loop, &h.resumer);
    snprintf(h.url, sizeof(h.url),
             "http://127.0.0.1:%u/v2/library/alpine/blobs/sha256:"
             "7c7272c96bd53928d659650ce0d351531ccca5b7ce618d14f48ec5c8ffd4919f",
             (unsigned)fakenet_server_port(h.server));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (h.server == NULL) setup();
    if (size == 0) return 0;
    struct run r;
    memset(&r, 0, sizeof(r));
    r.is_head = data[0] & 1;
    r.pause_each = data[0] & 2;
    r.cancel_in_body = data[0] & 4;
    h.chunk = data[0] >> 3;
    h.answer = (const char *)data + 1;
    h.answer_len = size - 1;

    struct upstream_pool_opts po = {.connect_timeout_ms = 5000, .io_timeout_ms = 5000};
    r.pool = upstream_pool_new(&h.loop, &po);
    HARNESS_REQUIRE(r.pool != NULL, "a pool");
    static const struct upstream_header headers[] = {
        {"Authorization", "Bearer secret", true},
        {"Accept", "application/vnd.oci.image.manifest.v1+json", false},
    };
    struct upstream_request_spec spec = {
        .method = r.is_head ? "HEAD" : "GET",
        .url = h.url,
        .headers = headers,
        .n_headers = 2,
        .max_redirects = 3,
    };
    static const struct upstream_callbacks cbs = {on_head, on_body, on_done};
    int rc = upstream_request(r.pool, &spec, &cbs, &r, &r.req);
    if (rc != 0) {
        HARNESS_REQUIRE(rc < 0, "a negative error");
        upstream_pool_close(r.pool);
    }
    uv_run(&h.loop, UV_RUN_DEFAULT);

    HARNESS_REQUIRE(rc != 0 || r.cancelled || r.dones == 1, "on_done came before the loop ran out");
    HARNESS_REQUIRE(fakenet_server_connections(h.server) == 0, "every connection is closed");
    return 0;
}
