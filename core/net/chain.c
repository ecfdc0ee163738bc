/*
 * chain.c: failover over an ordered list of upstream base URLs. See chain.h.
 */
#include "net/chain.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"

struct chain_req {
    struct upstream_pool *pool;
    const struct upstream_callbacks *cbs;
    void *ud;
    struct upstream_req *cur;
    char **bases;
    size_t n_bases;
    size_t attempt;
    char *method;
    char *target;
    struct upstream_header *headers;
    size_t n_headers;
    int max_redirects;
    bool has_body; /* one attempt only: a body cannot be sent twice */
    int64_t body_length;
    bool head_given;
    bool in_done;               /* on_done is being called: chain_cancel is a no-op */
    struct upstream_host *host; /* the table entry of the base tried now */
    uint64_t attempt_start_ns;
    char error[512];
};

/* --- Upstream hosts: backoff and statistics ------------------------------------------ */

#define HOST_SLOTS 64
#define BACKOFF_FIRST_MS 1000u
#define BACKOFF_MAX_MS 30000u

/* What the process knows of one upstream base: whether it backs off, and its counters. */
struct upstream_host {
    char base[256];
    uint64_t until_ms; /* tried last until then */
    unsigned failures; /* in a row */
    struct chain_host_stats st;
};

/* One table per process: every chain request of every loop sees the same hosts (a base
 * that fails on one loop backs off on all). A base comes from the configuration, so the
 * table does not fill; if it does, the slot of the host that answered longest ago is
 * reused. Locking: hosts_lock guards the table and last_answer_ms; it is held only to
 * read or update an entry (and, in chain_hosts_foreach, while the callback renders), never
 * across a call into the upstream client or a callback of the caller. */
static struct upstream_host hosts[HOST_SLOTS];
static uint64_t last_answer_ms;
static pthread_mutex_t hosts_lock = PTHREAD_MUTEX_INITIALIZER;

const double chain_latency_buckets[CHAIN_LATENCY_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                             0.25,  0.5,  1,     2.5,  10};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static struct upstream_host *host_find(const char *base, bool create)
{
    struct upstream_host *free_slot = NULL, *oldest = &hosts[0];
    for (size_t i = 0; i < HOST_SLOTS; i++) {
        struct upstream_host *h = &hosts[i];
        if (h->base[0] != '\0' && strcmp(h->base, base) == 0) return h;
        if (h->base[0] == '\0' && free_slot == NULL) free_slot = h;
        if (h->st.last_ok_ms < oldest->st.last_ok_ms) oldest = h;
    }
    if (!create || strlen(base) >= sizeof(oldest->base)) return NULL;
    struct upstream_host *h = free_slot ? free_slot : oldest;
    memset(h, 0, sizeof(*h));
    snprintf(h->base, sizeof(h->base), "%s", base);
    return h;
}

bool chain_backing_off(const char *base)
{
    pthread_mutex_lock(&hosts_lock);
    struct upstream_host *h = host_find(base, false);
    bool backing_off = h != NULL && h->until_ms > mono_ms();
    pthread_mutex_unlock(&hosts_lock);
    return backing_off;
}

void chain_hosts_foreach(void (*fn)(void *ud, const char *base, const struct chain_host_stats *st),
                         void *ud)
{
    pthread_mutex_lock(&hosts_lock);
    for (size_t i = 0; i < HOST_SLOTS; i++)
        if (hosts[i].base[0] != '\0') fn(ud, hosts[i].base, &hosts[i].st);
    pthread_mutex_unlock(&hosts_lock);
}

uint64_t chain_last_answer_ms(void)
{
    pthread_mutex_lock(&hosts_lock);
    uint64_t ms = last_answer_ms;
    pthread_mutex_unlock(&hosts_lock);
    return ms;
}

static void backoff_failed(struct upstream_host *h, const char *why)
{
    if (h == NULL) return;
    char base[sizeof(h->base)];
    pthread_mutex_lock(&hosts_lock);
    h->st.errors++;
    unsigned ms = BACKOFF_FIRST_MS << (h->failures < 5 ? h->failures : 5);
    if (ms > BACKOFF_MAX_MS) ms = BACKOFF_MAX_MS;
    h->failures++;
    h->until_ms = mono_ms() + ms;
    memcpy(base, h->base, sizeof(base));
    pthread_mutex_unlock(&hosts_lock);
    log_msg(LOG_WARN, "upstream %s failed (%s): tried last for the next %us", base, why, ms / 1000);
}

/* A head arrived from h: its latency, and the end of any backoff when it is no 5xx. */
static void host_answered(struct chain_req *c, int status)
{
    struct upstream_host *h = c->host;
    if (h == NULL) return;
    double s = (double)(uv_hrtime() - c->attempt_start_ns) / 1e9;
    bool again = false;
    char base[sizeof(h->base)];
    pthread_mutex_lock(&hosts_lock);
    h->st.latency_sum_s += s;
    h->st.latency_count++;
    for (size_t i = 0; i < CHAIN_LATENCY_BUCKETS; i++)
        if (s <= chain_latency_buckets[i]) h->st.latency_buckets[i]++;
    if (status < 500) {
        h->st.last_ok_ms = last_answer_ms = mono_ms();
        again = h->failures > 0;
        h->failures = 0;
        h->until_ms = 0;
        memcpy(base, h->base, sizeof(base));
    }
    pthread_mutex_unlock(&hosts_lock);
    if (again) log_msg(LOG_INFO, "upstream %s answers again", base);
}

static void chain_free(struct chain_req *c)
{
    for (size_t i = 0; i < c->n_bases; i++)
        free(c->bases[i]);
    free(c->bases);
    for (size_t i = 0; i < c->n_headers; i++) {
        free((char *)c->headers[i].name);
        free((char *)c->headers[i].value);
    }
    free(c->headers);
    free(c->method);
    free(c->target);
    free(c);
}

static int chain_start_attempt(struct chain_req *c);

/* Moves on to the next base after a failure; false when there is none. */
static bool chain_next(struct chain_req *c)
{
    while (c->attempt + 1 < c->n_bases) {
        log_msg(LOG_INFO, "trying the next upstream, %s", c->bases[c->attempt + 1]);
        c->attempt++;
        if (chain_start_attempt(c) == 0) return true;
    }
    return false;
}

static void on_head(void *ud, int status, const struct http_header *hdrs, size_t n,
                    int64_t content_length)
{
    struct chain_req *c = ud;
    host_answered(c, status);
    if (status >= 500) {
        snprintf(c->error, sizeof(c->error), "%s answered %d", c->bases[c->attempt], status);
        backoff_failed(c->host, c->error);
    }
    if (status >= 500 && c->attempt + 1 < c->n_bases && !c->has_body) {
        upstream_cancel(c->cur);
        c->cur = NULL;
        char answered[sizeof(c->error)];
        snprintf(answered, sizeof(answered), "%s", c->error);
        if (chain_next(c)) return;
        /* Every later base failed to start: report this one's failure. */
        snprintf(c->error, sizeof(c->error), "%s", answered);
        c->in_done = true;
        c->cbs->on_done(c->ud, UV_EPROTO);
        chain_free(c);
        return;
    }
    c->head_given = true;
    c->cbs->on_head(c->ud, status, hdrs, n, content_length);
}

static void on_body(void *ud, const char *data, size_t len)
{
    struct chain_req *c = ud;
    if (c->host != NULL) {
        pthread_mutex_lock(&hosts_lock);
        c->host->st.bytes += len;
        pthread_mutex_unlock(&hosts_lock);
    }
    c->cbs->on_body(c->ud, data, len);
}

static void on_done(void *ud, int err)
{
    struct chain_req *c = ud;
    if (err < 0) {
        snprintf(c->error, sizeof(c->error), "%s", upstream_error_message(c->cur));
        if (c->head_given && c->host != NULL) { /* the body broke off: no failover, no backoff */
            pthread_mutex_lock(&hosts_lock);
            c->host->st.errors++;
            pthread_mutex_unlock(&hosts_lock);
        }
        if (!c->head_given) {
            backoff_failed(c->host, c->error);
            c->cur = NULL;
            if (!c->has_body && chain_next(c)) return;
        }
    }
    c->cur = NULL;
    c->in_done = true;
    c->cbs->on_done(c->ud, err);
    chain_free(c);
}

static int chain_start_attempt(struct chain_req *c)
{
    static const struct upstream_callbacks cbs = {on_head, on_body, on_done};
    size_t len = strlen(c->bases[c->attempt]) + strlen(c->target) + 1;
    char *url = malloc(len);
    if (url == NULL) return UV_ENOMEM;
    snprintf(url, len, "%s%s", c->bases[c->attempt], c->target);
    struct upstream_request_spec spec = {
        .method = c->method,
        .url = url,
        .headers = c->headers,
        .n_headers = c->n_headers,
        .max_redirects = c->max_redirects,
        .has_body = c->has_body,
        .body_length = c->body_length,
    };
    pthread_mutex_lock(&hosts_lock);
    c->host = host_find(c->bases[c->attempt], true);
    if (c->host != NULL) c->host->st.requests++;
    pthread_mutex_unlock(&hosts_lock);
    c->attempt_start_ns = uv_hrtime();
    int rc = upstream_request(c->pool, &spec, &cbs, c, &c->cur);
    free(url);
    if (rc < 0) {
        snprintf(c->error, sizeof(c->error), "%s: %s", c->bases[c->attempt],
                 rc == UV_ENOTSUP ? "https upstreams are not supported by this build"
                                  : uv_strerror(rc));
        c->cur = NULL;
    }
    return rc;
}

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

int chain_request(struct upstream_pool *pool, const struct chain_spec *spec,
                  const struct upstream_callbacks *cbs, void *ud, struct chain_req **out)
{
    if (spec->n_bases == 0) return UV_EINVAL;
    struct chain_req *c = calloc(1, sizeof(*c));
    if (c == NULL) return UV_ENOMEM;
    c->pool = pool;
    c->cbs = cbs;
    c->ud = ud;
    c->max_redirects = spec->max_redirects;
    c->has_body = spec->has_body;
    c->body_length = spec->body_length;
    c->method = dup_str(spec->method);
    c->target = dup_str(spec->target);
    c->bases = calloc(spec->n_bases, sizeof(*c->bases));
    c->headers = calloc(spec->n_headers ? spec->n_headers : 1, sizeof(*c->headers));
    bool ok = c->method && c->target && c->bases && c->headers;
    /* The bases in the given order, except that those backing off go last. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; ok && i < spec->n_bases; i++) {
            if (chain_backing_off(spec->bases[i]) != (pass == 1)) continue;
            c->bases[c->n_bases] = dup_str(spec->bases[i]);
            ok = c->bases[c->n_bases] != NULL;
            c->n_bases++;
        }
    }
    for (size_t i = 0; ok && i < spec->n_headers; i++) {
        c->headers[i].name = dup_str(spec->headers[i].name);
        c->headers[i].value = dup_str(spec->headers[i].value);
        c->headers[i].sensitive = spec->headers[i].sensitive;
        c->n_headers = i + 1;
        ok = c->headers[i].name && c->headers[i].value;
    }
    if (!ok) {
        chain_free(c);
        return UV_ENOMEM;
    }
    int rc = chain_start_attempt(c);
    while (rc < 0 && c->attempt + 1 < c->n_bases && !c->has_body) {
        c->attempt++;
        rc = chain_start_attempt(c);
    }
    if (rc < 0) {
        chain_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int chain_send_body(struct chain_req *c, const char *data, size_t len, upstream_body_cb cb,
                    void *arg)
{
    return c->cur ? upstream_send_body(c->cur, data, len, cb, arg) : UV_ECANCELED;
}

int chain_end_body(struct chain_req *c)
{
    return c->cur ? upstream_end_body(c->cur) : UV_ECANCELED;
}

void chain_pause(struct chain_req *c)
{
    if (c->cur) upstream_pause(c->cur);
}

void chain_resume(struct chain_req *c)
{
    if (c->cur) upstream_resume(c->cur);
}

void chain_cancel(struct chain_req *c)
{
    if (c->in_done) return; /* freed when on_done returns, as upstream_cancel promises */
    if (c->cur) upstream_cancel(c->cur);
    chain_free(c);
}

const char *chain_base(const struct chain_req *c)
{
    return c->bases[c->attempt];
}

const char *chain_error_message(const struct chain_req *c)
{
    return c->error;
}

/* --- Metrics ------------------------------------------------------------------------- */

/* Which figure of a host a render pass writes. */
enum host_figure { HOST_REQUESTS, HOST_ERRORS, HOST_BYTES, HOST_LATENCY };

struct host_render {
    struct textbuf *out;
    enum host_figure what;
};

static void histogram_line(struct textbuf *o, const char *suffix, const char *base, const char *le)
{
    textbuf_printf(o, "content_cache_upstream_response_seconds_%s{upstream=\"", suffix);
    metrics_label_value(o, base);
    if (le != NULL) textbuf_printf(o, "\",le=\"%s", le);
    textbuf_puts(o, "\"} ");
}

static void host_line(void *ud, const char *base, const struct chain_host_stats *st)
{
    struct host_render *hr = ud;
    struct textbuf *o = hr->out;
    static const char *const names[] = {
        [HOST_REQUESTS] = "content_cache_upstream_requests_total",
        [HOST_ERRORS] = "content_cache_upstream_errors_total",
        [HOST_BYTES] = "content_cache_upstream_fetched_bytes_total",
    };
    switch (hr->what) {
    case HOST_REQUESTS:
        metrics_labelled(o, names[HOST_REQUESTS], "upstream", base, st->requests);
        break;
    case HOST_ERRORS:
        metrics_labelled(o, names[HOST_ERRORS], "upstream", base, st->errors);
        break;
    case HOST_BYTES:
        metrics_labelled(o, names[HOST_BYTES], "upstream", base, st->bytes);
        break;
    case HOST_LATENCY:
        for (size_t i = 0; i < CHAIN_LATENCY_BUCKETS; i++) {
            char le[32];
            snprintf(le, sizeof(le), "%g", chain_latency_buckets[i]);
            histogram_line(o, "bucket", base, le);
            textbuf_printf(o, "%llu\n", (unsigned long long)st->latency_buckets[i]);
        }
        histogram_line(o, "bucket", base, "+Inf");
        textbuf_printf(o, "%llu\n", (unsigned long long)st->latency_count);
        histogram_line(o, "sum", base, NULL);
        textbuf_printf(o, "%.6f\n", st->latency_sum_s);
        histogram_line(o, "count", base, NULL);
        textbuf_printf(o, "%llu\n", (unsigned long long)st->latency_count);
        break;
    }
}

void chain_render_metrics(const void *unused, struct textbuf *out)
{
    struct host_render hr = {out, HOST_REQUESTS};
    metrics_help(out, "content_cache_upstream_requests_total", "counter",
                 "Requests sent, by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = HOST_ERRORS;
    metrics_help(out, "content_cache_upstream_errors_total", "counter",
                 "Upstream requests that failed (unreachable, broken, 5xx), by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = HOST_BYTES;
    metrics_help(out, "content_cache_upstream_fetched_bytes_total", "counter",
                 "Response body bytes received, by upstream.");
    chain_hosts_foreach(host_line, &hr);
    hr.what = HOST_LATENCY;
    metrics_help(out, "content_cache_upstream_response_seconds", "histogram",
                 "Time to the response head, by upstream.");
    chain_hosts_foreach(host_line, &hr);
}
