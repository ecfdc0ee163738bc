/*
 * debug.c: /metrics and /debug/health on the debug address. See debug.h.
 */
#include "app/debug.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access/auth.h"
#include "cache/blob.h"
#include "cache/budget.h"
#include "net/chain.h"
#include "cache/expire.h"
#include "cache/fetch.h"
#include "lua/policy.h"
#include "registry/proxy.h"
#include "net/server.h"
#include "cache/store.h"

#define METRICS_MAX (256 * 1024)
#define HEALTH_UPSTREAM_FRESH_MS 60000u

/* --- Request counters ---------------------------------------------------------------- */

#define STATUS_SLOTS 64

static struct {
    char method[8];
    int status;
    uint64_t count;
} requests[STATUS_SLOTS];
static uint64_t requests_other;       /* past the slots: counted, not labelled */
static uint64_t blob_results[5];      /* by cache result: none, hit, miss, coalesced, bypass */
static uint64_t blob_result_bytes[5]; /* body bytes by cache result */

static int cache_index(const char *cache)
{
    static const char *const names[] = {"hit", "miss", "coalesced", "bypass"};
    for (int i = 0; cache != NULL && i < 4; i++)
        if (strcmp(cache, names[i]) == 0) return i + 1;
    return 0;
}

void debug_observe(const struct log_access_entry *e)
{
    const char *m = e->method ? e->method : "?";
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0)
        m = "other"; /* the label set stays small whatever clients send */
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
    int c = cache_index(e->cache);
    if (c != 0) {
        blob_results[c]++;
        blob_result_bytes[c] += e->bytes;
    }
}

/* --- Rendering ------------------------------------------------------------------------ */

struct out {
    char *buf;
    size_t len, pos;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    if (o->pos + 1 >= o->len) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->pos, o->len - o->pos, fmt, ap);
    va_end(ap);
    if (n > 0) o->pos += (size_t)n < o->len - o->pos ? (size_t)n : o->len - o->pos - 1;
}

static void help(struct out *o, const char *name, const char *type, const char *text)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* A metric with one value and no labels: its help, its type, its line. */
static void metric(struct out *o, const char *name, const char *type, const char *text,
                   unsigned long long value)
{
    help(o, name, type, text);
    put(o, "%s %llu\n", name, value);
}

/* One value of a metric with one label whose values are fixed names. */
static void labelled(struct out *o, const char *name, const char *label, const char *value,
                     unsigned long long n)
{
    put(o, "%s{%s=\"%s\"} %llu\n", name, label, value, n);
}

/* A label value: the upstream URLs come from the config, but escape as the format says. */
static void put_label(struct out *o, const char *v)
{
    for (; *v != '\0'; v++) {
        if (*v == '"' || *v == '\\')
            put(o, "\\%c", *v);
        else if (*v == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *v);
    }
}

struct host_render {
    struct out *o;
    int what;
};

static void host_line(void *ud, const char *base, const struct chain_host_stats *st)
{
    struct host_render *hr = ud;
    struct out *o = hr->o;
    if (hr->what == 3) {
        for (size_t i = 0; i < CHAIN_LATENCY_BUCKETS; i++) {
            put(o, "content_cache_upstream_response_seconds_bucket{upstream=\"");
            put_label(o, base);
            put(o, "\",le=\"%g\"} %llu\n", chain_latency_buckets[i],
                (unsigned long long)st->latency_buckets[i]);
        }
        put(o, "content_cache_upstream_response_seconds_bucket{upstream=\"");
        put_label(o, base);
        put(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)st->latency_count);
        put(o, "content_cache_upstream_response_seconds_sum{upstream=\"");
        put_label(o, base);
        put(o, "\"} %.6f\n", st->latency_sum_s);
        put(o, "content_cache_upstream_response_seconds_count{upstream=\"");
        put_label(o, base);
        put(o, "\"} %llu\n", (unsigned long long)st->latency_count);
        return;
    }
    static const char *const names[] = {"content_cache_upstream_requests_total",
                                        "content_cache_upstream_errors_total",
                                        "content_cache_upstream_fetched_bytes_total"};
    uint64_t v = hr->what == 0 ? st->requests : hr->what == 1 ? st->errors : st->bytes;
    put(o, "%s{upstream=\"", names[hr->what]);
    put_label(o, base);
    put(o, "\"} %llu\n", (unsigned long long)v);
}

size_t debug_render_metrics(const struct debug_sources *src, char *buf, size_t len)
{
    struct out o = {buf, len, 0};
    buf[0] = '\0';

    help(&o, "content_cache_http_requests_total", "counter",
         "Requests answered, by method and status.");
    for (size_t i = 0; i < STATUS_SLOTS && requests[i].status != 0; i++)
        put(&o, "content_cache_http_requests_total{method=\"%s\",status=\"%d\"} %llu\n",
            requests[i].method, requests[i].status, (unsigned long long)requests[i].count);
    if (requests_other)
        put(&o, "content_cache_http_requests_total{method=\"other\",status=\"other\"} %llu\n",
            (unsigned long long)requests_other);

    static const char *const results[] = {NULL, "hit", "miss", "coalesced", "bypass"};
    help(&o, "content_cache_blob_requests_total", "counter",
         "Blob GETs by how they were served: hit (disk), miss (started a fetch), coalesced "
         "(joined a fetch), bypass (relayed).");
    for (int i = 1; i < 5; i++)
        labelled(&o, "content_cache_blob_requests_total", "result", results[i], blob_results[i]);
    help(&o, "content_cache_blob_served_bytes_total", "counter",
         "Blob bytes sent to clients, by how they were served (hit: from disk).");
    for (int i = 1; i < 5; i++)
        labelled(&o, "content_cache_blob_served_bytes_total", "result", results[i],
                 blob_result_bytes[i]);

    struct host_render hr = {&o, 0};
    help(&o, "content_cache_upstream_requests_total", "counter", "Requests sent, by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = 1;
    help(&o, "content_cache_upstream_errors_total", "counter",
         "Upstream requests that failed (unreachable, broken, 5xx), by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = 2;
    help(&o, "content_cache_upstream_fetched_bytes_total", "counter",
         "Response body bytes received, by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = 3;
    help(&o, "content_cache_upstream_response_seconds", "histogram",
         "Time to the response head, by upstream.");
    chain_hosts_foreach(host_line, &hr);

    if (src->fetches != NULL) {
        const struct fetch_stats *fs = fetch_manager_stats(src->fetches);
        help(&o, "content_cache_fetches_total", "counter",
             "Upstream blob fetches, by outcome (started, committed, failed, passthrough).");
        static const char fetches[] = "content_cache_fetches_total";
        labelled(&o, fetches, "outcome", "started", fs->started);
        labelled(&o, fetches, "outcome", "committed", fs->committed);
        labelled(&o, fetches, "outcome", "failed", fs->failed);
        labelled(&o, fetches, "outcome", "passthrough", fs->passthrough);
        metric(&o, "content_cache_fetches_running", "gauge", "Fetches in progress.",
               fetch_manager_active(src->fetches));
    }
    if (src->budget != NULL) {
        const struct budget_stats *bs = budget_get_stats(src->budget);
        metric(&o, "content_cache_stored_blobs", "gauge", "Blobs in the store.", bs->blobs);
        metric(&o, "content_cache_stored_bytes", "gauge", "Bytes of the blobs in the store.",
               bs->bytes);
        metric(&o, "content_cache_evicted_blobs_total", "counter",
               "Blobs deleted to stay within the disk budget.", bs->evicted);
        metric(&o, "content_cache_evicted_bytes_total", "counter",
               "Bytes deleted to stay within the disk budget.", bs->evicted_bytes);
    }
    if (src->expiry != NULL) {
        const struct expire_stats *es = expire_get_stats(src->expiry);
        metric(&o, "content_cache_expired_blobs_total", "counter",
               "Blobs deleted because their blobttl passed.", es->removed);
        metric(&o, "content_cache_expired_bytes_total", "counter",
               "Bytes deleted because their blobttl passed.", es->removed_bytes);
    }
    if (src->blobs != NULL) {
        const struct blob_auth_stats *as = blob_service_auth_stats(src->blobs);
        help(&o, "content_cache_authorizations_total", "counter",
             "Blob authorization decisions, by where they came from: memory (remembered "
             "answers), upstream (a HEAD with the client's credential), token (verified here).");
        static const char auths[] = "content_cache_authorizations_total";
        labelled(&o, auths, "source", "memory", as->from_memory);
        labelled(&o, auths, "source", "upstream", as->from_upstream);
        labelled(&o, auths, "source", "token", as->token_verified);
        metric(&o, "content_cache_token_refusals_total", "counter",
               "Bearer tokens refused by local verification (auth.token).", as->token_refused);
    }
    if (src->policy != NULL) {
        help(&o, "content_cache_policy_errors_total", "counter",
             "Policy hook calls that failed (error, budget, memory, wrong type), by hook; the "
             "built-in default served those calls.");
        for (int h = 0; h < POLICY_HOOK_COUNT; h++)
            labelled(&o, "content_cache_policy_errors_total", "hook",
                     policy_hook_name((enum policy_hook)h),
                     policy_error_count(src->policy, (enum policy_hook)h));
    }
    if (src->server != NULL) {
        metric(&o, "content_cache_connections", "gauge", "Client connections open.",
               http_server_connections(src->server));
    }
    return o.pos;
}

/* --- The debug server ------------------------------------------------------------------ */

struct debug {
    uv_loop_t *loop;
    struct debug_sources *src;
    struct http_server *server;
};

/* A health check in progress. */
struct health {
    struct debug *d;
    struct http_exchange *x;
    uv_work_t work;
    int storage_err;
    struct chain_req *probe;
    int probe_status;
    int probe_err;
    char probe_error[300];
    bool gone;
};

static void health_answer(struct health *hc)
{
    char body[1024];
    size_t n = 0;
    bool ok = true;
    uint64_t last = chain_last_answer_ms();
    uint64_t now = uv_hrtime() / 1000000u;
    n += (size_t)snprintf(body + n, sizeof(body) - n, "{\"storage\":");
    if (hc->storage_err != 0) {
        ok = false;
        n += (size_t)snprintf(body + n, sizeof(body) - n, "\"storage root %s is not writable: %s\"",
                              store_root(hc->d->src->store), uv_strerror(hc->storage_err));
    } else {
        n += (size_t)snprintf(body + n, sizeof(body) - n, "\"writable\"");
    }
    n += (size_t)snprintf(body + n, sizeof(body) - n, ",\"upstream\":");
    if (last != 0 && now - last < HEALTH_UPSTREAM_FRESH_MS) {
        n += (size_t)snprintf(body + n, sizeof(body) - n, "\"answered %llums ago\"",
                              (unsigned long long)(now - last));
    } else {
        ok = false;
        n += (size_t)snprintf(body + n, sizeof(body) - n, "\"no upstream answered: %s\"",
                              hc->probe_error[0] ? hc->probe_error : "none asked");
    }
    n += (size_t)snprintf(body + n, sizeof(body) - n, ",\"status\":\"%s\"}\n",
                          ok ? "healthy" : "unhealthy");
    struct http_header h[2] = {{"Content-Type", 12, "application/json", 16},
                               {"Cache-Control", 13, "no-store", 8}};
    if (http_respond_full(hc->x, ok ? 200 : 503, h, 2, body, n) != 0) http_respond_abort(hc->x);
    free(hc);
}

static void probe_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                       int64_t content_length)
{
    struct health *hc = ud;
    hc->probe_status = status;
}

static void probe_body(void *ud, const char *data, size_t len) {}

static void probe_done(void *ud, int err)
{
    struct health *hc = ud;
    if (hc->probe_status == 0 || hc->probe_status >= 500)
        snprintf(hc->probe_error, sizeof(hc->probe_error), "%s",
                 hc->probe_status ? "5xx" : chain_error_message(hc->probe));
    hc->probe = NULL;
    if (hc->gone) {
        http_respond_end(hc->x);
        free(hc);
        return;
    }
    health_answer(hc);
}

static void health_gone(struct http_exchange *x, void *arg)
{
    struct health *hc = arg;
    hc->gone = true;
}

static void storage_work(uv_work_t *w)
{
    struct health *hc = w->data;
    hc->storage_err = store_probe_sync(hc->d->src->store);
}

static void storage_done(uv_work_t *w, int status)
{
    struct health *hc = w->data;
    if (hc->gone) {
        http_respond_end(hc->x);
        free(hc);
        return;
    }
    uint64_t last = chain_last_answer_ms();
    uint64_t now = uv_hrtime() / 1000000u;
    if ((last == 0 || now - last >= HEALTH_UPSTREAM_FRESH_MS) && hc->d->src->proxy != NULL) {
        /* No upstream answered lately: ask one now (any answer but a 5xx will do). */
        struct policy_request req = {.method = "GET", .kind = "base"};
        size_t n;
        const char *const *bases = proxy_select(hc->d->src->proxy, &req, 0, &n);
        struct chain_spec spec = {.method = "GET", .bases = bases, .n_bases = n, .target = "/v2/"};
        static const struct upstream_callbacks cbs = {probe_head, probe_body, probe_done};
        if (chain_request(proxy_pool(hc->d->src->proxy), &spec, &cbs, hc, &hc->probe) == 0) return;
        snprintf(hc->probe_error, sizeof(hc->probe_error), "cannot ask the upstream");
    }
    health_answer(hc);
}

static void debug_handle(struct http_exchange *x, void *ud)
{
    struct debug *d = ud;
    size_t len;
    const char *path = http_req_path(x, &len);
    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        http_respond_full(x, 405, NULL, 0, "method not allowed\n", 19);
        return;
    }
    if (len == 8 && memcmp(path, "/metrics", 8) == 0) {
        char *buf = malloc(METRICS_MAX);
        if (buf == NULL) {
            http_respond_full(x, 503, NULL, 0, "out of memory\n", 14);
            return;
        }
        size_t n = debug_render_metrics(d->src, buf, METRICS_MAX);
        struct http_header h = {"Content-Type", 12, "text/plain; version=0.0.4; charset=utf-8", 40};
        if (http_respond_full(x, 200, &h, 1, buf, n) != 0) http_respond_abort(x);
        free(buf);
        return;
    }
    if (len == 13 && memcmp(path, "/debug/health", 13) == 0 && d->src->store != NULL) {
        struct health *hc = calloc(1, sizeof(*hc));
        if (hc == NULL) {
            http_respond_full(x, 503, NULL, 0, "out of memory\n", 14);
            return;
        }
        hc->d = d;
        hc->x = x;
        hc->work.data = hc;
        http_exchange_on_gone(x, health_gone, hc);
        if (uv_queue_work(d->loop, &hc->work, storage_work, storage_done) != 0) {
            hc->storage_err = UV_ENOMEM;
            health_answer(hc);
        }
        return;
    }
    http_respond_full(x, 404, NULL, 0, "not found\n", 10);
}

int debug_start(uv_loop_t *loop, const char *addr, struct debug_sources *src, struct debug **out,
                char *err, size_t errlen)
{
    struct debug *d = calloc(1, sizeof(*d));
    if (d == NULL) return UV_ENOMEM;
    d->loop = loop;
    d->src = src;
    struct http_server_opts opts = {.on_request = debug_handle, .ud = d};
    int rc = http_server_listen(loop, addr, &opts, &d->server, err, errlen);
    if (rc != 0) {
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

void debug_stop(struct debug *d)
{
    if (d == NULL) return;
    http_server_shutdown(d->server, 0, free, d);
}

const char *debug_address(const struct debug *d)
{
    return http_server_address(d->server);
}
