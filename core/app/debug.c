/*
 * debug.c: /metrics and /debug/health on the debug address. See debug.h.
 */
#include "app/debug.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/server.h"

#define METRICS_MAX (256 * 1024)
#define HEALTH_BODY_MAX 8192
#define DEBUG_SECTIONS_MAX 32
#define DEBUG_CHECKS_MAX 8
#define DEBUG_ROUTES_MAX 4

/* --- Request counters ---------------------------------------------------------------- */

#define STATUS_SLOTS 64

/* The counters are the process's, fed by every loop (workers): counters_lock guards them,
 * held for one update or one rendering, never across a callback. */
static pthread_mutex_t counters_lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
    char method[8];
    int status;
    uint64_t count;
} requests[STATUS_SLOTS];
static uint64_t requests_other; /* past the slots: counted, not labelled */

/* Blob GETs by how the cache served them (the access line's cache= field). */
static const char *const blob_results[] = {"hit", "miss", "coalesced", "bypass"};
#define BLOB_RESULTS (sizeof(blob_results) / sizeof(*blob_results))
static uint64_t blob_result_count[BLOB_RESULTS];
static uint64_t blob_result_bytes[BLOB_RESULTS];

void debug_observe(const struct log_access_entry *e)
{
    const char *m = e->method ? e->method : "?";
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0)
        m = "other"; /* the label set stays small whatever clients send */
    pthread_mutex_lock(&counters_lock);
    size_t i = 0;
    for (; i < STATUS_SLOTS && requests[i].status != 0; i++)
        if (requests[i].status == e->status && strcmp(requests[i].method, m) == 0) break;
    if (i == STATUS_SLOTS) {
        requests_other++;
    } else {
        if (requests[i].status == 0) {
            snprintf(requests[i].method, sizeof(requests[i].method), "%s", m);
            requests[i].status = e->status;
        }
        requests[i].count++;
    }
    for (size_t c = 0; e->cache != NULL && c < BLOB_RESULTS; c++) {
        if (strcmp(e->cache, blob_results[c]) == 0) {
            blob_result_count[c]++;
            blob_result_bytes[c] += e->bytes;
            break;
        }
    }
    pthread_mutex_unlock(&counters_lock);
}

static void render_requests(struct textbuf *o)
{
    pthread_mutex_lock(&counters_lock);
    metrics_help(o, "content_cache_http_requests_total", "counter",
                 "Requests answered, by method and status.");
    for (size_t i = 0; i < STATUS_SLOTS && requests[i].status != 0; i++)
        textbuf_printf(o, "content_cache_http_requests_total{method=\"%s\",status=\"%d\"} %llu\n",
                       requests[i].method, requests[i].status,
                       (unsigned long long)requests[i].count);
    if (requests_other)
        textbuf_printf(
            o, "content_cache_http_requests_total{method=\"other\",status=\"other\"} %llu\n",
            (unsigned long long)requests_other);

    metrics_help(o, "content_cache_blob_requests_total", "counter",
                 "Blob GETs by how they were served: hit (disk), miss (started a fetch), "
                 "coalesced (joined a fetch), bypass (relayed).");
    for (size_t i = 0; i < BLOB_RESULTS; i++)
        metrics_labelled(o, "content_cache_blob_requests_total", "result", blob_results[i],
                         blob_result_count[i]);
    metrics_help(o, "content_cache_blob_served_bytes_total", "counter",
                 "Blob bytes sent to clients, by how they were served (hit: from disk).");
    for (size_t i = 0; i < BLOB_RESULTS; i++)
        metrics_labelled(o, "content_cache_blob_served_bytes_total", "result", blob_results[i],
                         blob_result_bytes[i]);
    pthread_mutex_unlock(&counters_lock);
}

/* --- The debug server ------------------------------------------------------------------ */

struct debug {
    uv_loop_t *loop;
    struct http_server *server;
    struct {
        metrics_render_fn render;
        const void *source;
    } sections[DEBUG_SECTIONS_MAX];
    size_t n_sections;
    struct {
        char name[32];
        health_check_fn check;
        void *source;
        int last_ok; /* the latest answer: 1 healthy, 0 not, -1 none yet */
    } checks[DEBUG_CHECKS_MAX];
    size_t n_checks;
    struct health *background; /* the evaluation a scrape started, while in flight */
    struct {
        char prefix[64];
        http_request_cb handle;
        void *ud;
    } routes[DEBUG_ROUTES_MAX];
    size_t n_routes;
    void (*gather)(void *ud, debug_gathered_fn done, void *arg);
    void *gather_ud;
    unsigned scrapes; /* scrapes waiting for the other loops' figures */
    bool stopped;     /* debug_stop came while some were: the last frees d */
};

void debug_set_gather(struct debug *d, void (*gather)(void *ud, debug_gathered_fn done, void *arg),
                      void *ud)
{
    d->gather = gather;
    d->gather_ud = ud;
}

static void render_health(const struct debug *d, struct textbuf *o)
{
    bool any = false;
    for (size_t i = 0; i < d->n_checks; i++) {
        if (d->checks[i].last_ok < 0) continue;
        if (!any)
            metrics_help(o, "content_cache_health_ok", "gauge",
                         "The latest answer of each /debug/health check: 1 healthy, 0 not.");
        any = true;
        metrics_labelled(o, "content_cache_health_ok", "check", d->checks[i].name,
                         (uint64_t)d->checks[i].last_ok);
    }
}

size_t debug_render_metrics(const struct debug *d, char *buf, size_t len)
{
    struct textbuf o;
    textbuf_init(&o, buf, len);
    render_requests(&o);
    for (size_t i = 0; d != NULL && i < d->n_sections; i++)
        d->sections[i].render(d->sections[i].source, &o);
    if (d != NULL) render_health(d, &o);
    return o.len;
}

int debug_add_section(struct debug *d, metrics_render_fn render, const void *source)
{
    if (d->n_sections == DEBUG_SECTIONS_MAX) return -ENOMEM;
    d->sections[d->n_sections].render = render;
    d->sections[d->n_sections].source = source;
    d->n_sections++;
    return 0;
}

int debug_add_check(struct debug *d, const char *name, health_check_fn check, void *source)
{
    if (d->n_checks == DEBUG_CHECKS_MAX) return -ENOMEM;
    snprintf(d->checks[d->n_checks].name, sizeof(d->checks[d->n_checks].name), "%s", name);
    d->checks[d->n_checks].check = check;
    d->checks[d->n_checks].source = source;
    d->checks[d->n_checks].last_ok = -1;
    d->n_checks++;
    return 0;
}

/*
 * A health evaluation in progress: the checks run one after the other, each adding its
 * member to the body and setting its last_ok. A check may answer before it returns;
 * `starting` tells the callback so, and the loop in health_next goes on instead of
 * recursing. x is NULL for the evaluation a scrape starts (d->background): it answers
 * nobody, and d is set to NULL when the debug server stops before it ends.
 */
struct health {
    struct debug *d;
    struct http_exchange *x;
    size_t next;   /* the check to run next */
    bool starting; /* inside a check's start */
    bool answered; /* the check being started has answered */
    bool ok;
    bool gone;
    struct textbuf body;
    char body_buf[HEALTH_BODY_MAX];
};

static void health_finish(struct health *hc)
{
    if (hc->x == NULL) {
        hc->d->background = NULL;
        free(hc);
        return;
    }
    if (hc->gone) {
        http_respond_end(hc->x);
        free(hc);
        return;
    }
    textbuf_printf(&hc->body, "%s\"status\":\"%s\"}\n", hc->d->n_checks ? "," : "",
                   hc->ok ? "healthy" : "unhealthy");
    if (hc->body.cut) {
        /* A member that did not fit must not leave a broken JSON document. */
        textbuf_init(&hc->body, hc->body_buf, sizeof(hc->body_buf));
        textbuf_printf(&hc->body, "{\"status\":\"%s\"}\n", hc->ok ? "healthy" : "unhealthy");
    }
    struct http_header h[2] = {{"Content-Type", 12, "application/json", 16},
                               {"Cache-Control", 13, "no-store", 8}};
    if (http_respond_full(hc->x, hc->ok ? 200 : 503, h, 2, hc->body.buf, hc->body.len) != 0)
        http_respond_abort(hc->x);
    free(hc);
}

static void health_next(struct health *hc);

static void health_check_done(void *arg, bool ok, const char *detail)
{
    struct health *hc = arg;
    if (hc->d == NULL) { /* a scrape's evaluation that outlived the debug server */
        free(hc);
        return;
    }
    const char *name = hc->d->checks[hc->next].name;
    hc->d->checks[hc->next].last_ok = ok ? 1 : 0;
    hc->ok = hc->ok && ok;
    textbuf_printf(&hc->body, "%s\"%s\":\"", hc->next ? "," : "", name);
    textbuf_put_json(&hc->body, detail);
    textbuf_puts(&hc->body, "\"");
    hc->next++;
    if (hc->starting)
        hc->answered = true;
    else
        health_next(hc);
}

static void health_next(struct health *hc)
{
    while (hc->next < hc->d->n_checks) {
        hc->starting = true;
        hc->answered = false;
        hc->d->checks[hc->next].check(hc->d->checks[hc->next].source, hc->d->loop,
                                      health_check_done, hc);
        hc->starting = false;
        if (!hc->answered) return; /* it answers later, from the loop */
    }
    health_finish(hc);
}

static void health_gone(struct http_exchange *x, void *arg)
{
    struct health *hc = arg;
    hc->gone = true;
}

static struct health *health_new(struct debug *d, struct http_exchange *x)
{
    struct health *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) return NULL;
    hc->d = d;
    hc->x = x;
    hc->ok = true;
    textbuf_init(&hc->body, hc->body_buf, sizeof(hc->body_buf));
    textbuf_puts(&hc->body, "{");
    return hc;
}

/* Each scrape starts an evaluation of the checks, unless one is in flight: the health
 * gauges then follow the scrapes even when nobody asks /debug/health. */
static void health_start_background(struct debug *d)
{
    if (d->background != NULL || d->n_checks == 0) return;
    d->background = health_new(d, NULL);
    if (d->background != NULL) health_next(d->background);
}

/* A /metrics answer that waits for the other loops' figures. */
struct scrape {
    struct debug *d;
    struct http_exchange *x; /* NULL once the client is gone */
};

static void scrape_gone(struct http_exchange *x, void *arg)
{
    ((struct scrape *)arg)->x = NULL;
}

static void metrics_respond(struct debug *d, struct http_exchange *x, const char *more,
                            size_t more_len)
{
    char *buf = malloc(METRICS_MAX);
    if (buf == NULL) {
        http_respond_full(x, 503, NULL, 0, "out of memory\n", 14);
        return;
    }
    size_t n = debug_render_metrics(d, buf, METRICS_MAX);
    if (more_len > 0) {
        struct textbuf total = {buf, METRICS_MAX, n, false};
        metrics_sum_into(&total, more, more_len);
        n = total.len;
    }
    struct http_header h = {"Content-Type", 12, "text/plain; version=0.0.4; charset=utf-8", 40};
    if (http_respond_full(x, 200, &h, 1, buf, n) != 0) http_respond_abort(x);
    free(buf);
}

static void scrape_gathered(void *arg, const char *text, size_t len)
{
    struct scrape *sc = arg;
    struct debug *d = sc->d;
    d->scrapes--;
    if (sc->x != NULL && !d->stopped) {
        http_exchange_on_gone(sc->x, NULL, NULL);
        metrics_respond(d, sc->x, text, len);
    }
    free(sc);
    if (d->stopped && d->scrapes == 0) free(d);
}

static void debug_handle(struct http_exchange *x, void *ud)
{
    struct debug *d = ud;
    size_t len;
    const char *path = http_req_path(x, &len);
    for (size_t i = 0; i < d->n_routes; i++) {
        size_t plen = strlen(d->routes[i].prefix);
        if (len >= plen && memcmp(path, d->routes[i].prefix, plen) == 0 &&
            (len == plen || path[plen] == '/')) {
            d->routes[i].handle(x, d->routes[i].ud);
            return;
        }
    }
    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        http_respond_full(x, 405, NULL, 0, "method not allowed\n", 19);
        return;
    }
    if (len == 8 && memcmp(path, "/metrics", 8) == 0) {
        /* Checks that answer at once show in this scrape, the others from the next. */
        health_start_background(d);
        struct scrape *sc = d->gather != NULL ? calloc(1, sizeof(*sc)) : NULL;
        if (sc == NULL) {
            metrics_respond(d, x, NULL, 0);
            return;
        }
        sc->d = d;
        sc->x = x;
        d->scrapes++;
        http_exchange_on_gone(x, scrape_gone, sc);
        d->gather(d->gather_ud, scrape_gathered, sc);
        return;
    }
    if (len == 13 && memcmp(path, "/debug/health", 13) == 0) {
        struct health *hc = health_new(d, x);
        if (hc == NULL) {
            http_respond_full(x, 503, NULL, 0, "out of memory\n", 14);
            return;
        }
        http_exchange_on_gone(x, health_gone, hc);
        health_next(hc);
        return;
    }
    http_respond_full(x, 404, NULL, 0, "not found\n", 10);
}

int debug_add_route(struct debug *d, const char *prefix, http_request_cb handle, void *ud)
{
    if (d->n_routes == DEBUG_ROUTES_MAX || strlen(prefix) >= sizeof(d->routes[0].prefix))
        return -ENOMEM;
    snprintf(d->routes[d->n_routes].prefix, sizeof(d->routes[0].prefix), "%s", prefix);
    d->routes[d->n_routes].handle = handle;
    d->routes[d->n_routes].ud = ud;
    d->n_routes++;
    return 0;
}

int debug_start(uv_loop_t *loop, const char *addr, struct debug **out, char *err, size_t errlen)
{
    struct debug *d = calloc(1, sizeof(*d));
    if (d == NULL) return UV_ENOMEM;
    d->loop = loop;
    struct http_server_opts opts = {.on_request = debug_handle, .ud = d};
    int rc = http_server_listen(loop, addr, &opts, &d->server, err, errlen);
    if (rc != 0) {
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

/* The server is closed: d goes, or, while scrapes wait for other loops, the last does. */
static void debug_closed(void *arg)
{
    struct debug *d = arg;
    d->stopped = true;
    if (d->scrapes == 0) free(d);
}

void debug_stop(struct debug *d)
{
    if (d == NULL) return;
    if (d->background != NULL) d->background->d = NULL; /* it frees itself when it ends */
    http_server_shutdown(d->server, 0, debug_closed, d);
}

const char *debug_address(const struct debug *d)
{
    return http_server_address(d->server);
}
