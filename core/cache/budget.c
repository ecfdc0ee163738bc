/*
 * budget.c: store totals and eviction under a disk budget. See budget.h.
 */
#include "cache/budget.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/digest.h"
#include "cache/links.h"
#include "cache/pulls.h"

#define BUDGET_MAX_CANDIDATES 10000 /* handed to the evict policy per run */

enum phase { PHASE_IDLE, PHASE_TOTALS, PHASE_LIST, PHASE_DELETE };

struct budget {
    uv_loop_t *loop;
    struct store *store;
    struct budget_opts o;
    struct budget_stats st;
    uv_work_t work;
    enum phase phase;
    bool stopping;
    uint64_t scan_blobs, scan_bytes;
    budget_blob *list;
    size_t n_list, cap_list;
    struct links_index *links; /* of the eviction run in progress */
    budget_blob *doomed;
    int *results;
    size_t n_doomed;
};

static uint64_t high_mark(const struct budget *b)
{
    return b->o.max_bytes / 100 * b->o.high_pct + b->o.max_bytes % 100 * b->o.high_pct / 100;
}

static uint64_t low_mark(const struct budget *b)
{
    return b->o.max_bytes / 100 * b->o.low_pct + b->o.max_bytes % 100 * b->o.low_pct / 100;
}

/* --- Thread pool ------------------------------------------------------------------- */

static int count_blob(void *ud, const char *hex, const struct stat *sb)
{
    struct budget *b = ud;
    b->scan_blobs++;
    b->scan_bytes += (uint64_t)sb->st_size;
    return 0;
}

static int list_blob(void *ud, const char *hex, const struct stat *sb)
{
    struct budget *b = ud;
    if (b->n_list == b->cap_list) {
        size_t cap = b->cap_list ? b->cap_list * 2 : 1024;
        budget_blob *nl = realloc(b->list, cap * sizeof(*nl));
        if (nl == NULL) return 1;
        b->list = nl;
        b->cap_list = cap;
    }
    expire_blob_from_stat(b->store, hex, sb, b->links, &b->list[b->n_list++]);
    return 0;
}

static void work_cb(uv_work_t *w)
{
    struct budget *b = w->data;
    switch (b->phase) {
    case PHASE_TOTALS:
        b->scan_blobs = b->scan_bytes = 0;
        for (unsigned p = 0; p < 256; p++)
            store_scan_prefix_sync(b->store, p, count_blob, b);
        break;
    case PHASE_LIST:
        b->n_list = 0;
        links_index_free(b->links);
        b->links = NULL;
        links_index_build_sync(b->store, &b->links);
        for (unsigned p = 0; p < 256; p++)
            store_scan_prefix_sync(b->store, p, list_blob, b);
        break;
    case PHASE_DELETE:
        for (size_t i = 0; i < b->n_doomed; i++) {
            b->results[i] = store_remove_if_unpulled_sync(b->store, b->doomed[i].hex,
                                                          b->doomed[i].last_pulled + 0.001);
            if (b->results[i] == 0) pulls_reset_sync(b->store, b->doomed[i].hex);
        }
        break;
    case PHASE_IDLE:
        break;
    }
}

static void after_work(uv_work_t *w, int status);

static void queue(struct budget *b, enum phase phase)
{
    b->phase = phase;
    b->work.data = b;
    if (uv_queue_work(b->loop, &b->work, work_cb, after_work) != 0) b->phase = PHASE_IDLE;
}

static void maybe_evict(struct budget *b)
{
    if (b->o.max_bytes == 0 || !b->st.scanned || b->phase != PHASE_IDLE || b->stopping) return;
    if (b->st.bytes <= high_mark(b)) return;
    b->st.runs++;
    log_msg(LOG_INFO,
            "disk budget: %llu bytes stored, above the high watermark (%llu): evicting "
            "down to %llu",
            (unsigned long long)b->st.bytes, (unsigned long long)high_mark(b),
            (unsigned long long)low_mark(b));
    queue(b, PHASE_LIST);
}

static int by_last_pulled(const void *pa, const void *pb)
{
    const budget_blob *a = pa, *c = pb;
    if (a->last_pulled != c->last_pulled) return a->last_pulled < c->last_pulled ? -1 : 1;
    return strcmp(a->hex, c->hex);
}

/*
 * The victims among cands[0..n) (least recently pulled first) for `need` bytes: what the
 * evict policy answers, or, when it has none or fails, least recently pulled first until
 * enough is freed (the last resort, not the policy: policies/evict.lua is). Fills victims
 * (n of room) with indexes; returns how many.
 */
static size_t pick_victims(const struct budget_opts *o, const budget_blob *cands, size_t n,
                           uint64_t need, size_t *victims)
{
    long nv = o->evict ? o->evict(o->ud, cands, n, need, victims, n) : -ENOENT;
    if (nv >= 0) return (size_t)nv;
    uint64_t freed = 0;
    size_t k = 0;
    for (size_t i = 0; i < n && freed < need; i++) {
        victims[k++] = i;
        freed += cands[i].size;
    }
    return k;
}

/* Chooses the victims among the listed blobs and queues their deletion. */
static void choose(struct budget *b)
{
    uint64_t need = b->st.bytes > low_mark(b) ? b->st.bytes - low_mark(b) : 0;
    qsort(b->list, b->n_list, sizeof(*b->list), by_last_pulled);
    /* Blobs being read now stay; the rest are candidates, least recently pulled first. */
    size_t n = 0;
    for (size_t i = 0; i < b->n_list && n < BUDGET_MAX_CANDIDATES; i++) {
        if (b->o.in_use != NULL && b->o.in_use(b->o.ud, b->list[i].hex)) {
            b->st.skipped_in_use++;
            continue;
        }
        b->list[n++] = b->list[i];
    }
    size_t *victims = calloc(n ? n : 1, sizeof(*victims));
    free(b->doomed);
    free(b->results);
    b->doomed = calloc(n ? n : 1, sizeof(*b->doomed));
    b->results = calloc(n ? n : 1, sizeof(*b->results));
    b->n_doomed = 0;
    if (victims == NULL || b->doomed == NULL || b->results == NULL) {
        free(victims);
        return;
    }
    size_t nv = pick_victims(&b->o, b->list, n, need, victims);
    for (size_t i = 0; i < nv; i++)
        if (victims[i] < n) b->doomed[b->n_doomed++] = b->list[victims[i]];
    free(victims);
    if (b->n_doomed > 0)
        queue(b, PHASE_DELETE);
    else
        log_msg(LOG_WARN, "disk budget: nothing can be evicted now (%zu blobs in use)",
                (size_t)b->st.skipped_in_use);
}

static void after_work(uv_work_t *w, int status)
{
    struct budget *b = w->data;
    enum phase done = b->phase;
    b->phase = PHASE_IDLE;
    if (b->stopping) {
        free(b->list);
        free(b->doomed);
        free(b->results);
        links_index_free(b->links);
        free(b);
        return;
    }
    switch (done) {
    case PHASE_TOTALS:
        b->st.blobs += b->scan_blobs;
        b->st.bytes += b->scan_bytes;
        b->st.scanned = true;
        log_msg(LOG_INFO, "storage holds %llu blobs, %llu bytes", (unsigned long long)b->st.blobs,
                (unsigned long long)b->st.bytes);
        break;
    case PHASE_LIST:
        choose(b);
        return;
    case PHASE_DELETE: {
        bool progress = false;
        for (size_t i = 0; i < b->n_doomed; i++) {
            if (b->results[i] != 0) {
                if (b->results[i] == -EBUSY)
                    log_msg(LOG_DEBUG,
                            "blob sha256:%s was pulled while it was chosen for "
                            "eviction: kept",
                            b->doomed[i].hex);
                continue;
            }
            progress = true;
            b->st.evicted++;
            b->st.evicted_bytes += b->doomed[i].size;
            budget_removed(b, b->doomed[i].size);
            log_msg(LOG_INFO, "evicted blob sha256:%s (%llu bytes) to stay within the disk budget",
                    b->doomed[i].hex, (unsigned long long)b->doomed[i].size);
        }
        b->n_doomed = 0;
        if (!progress) return; /* the next commit tries again */
        break;                 /* still above the high watermark (blobs pulled meanwhile)? again */
    }
    case PHASE_IDLE:
        break;
    }
    maybe_evict(b);
}

/* --- Loop thread ------------------------------------------------------------------- */

int budget_start(uv_loop_t *loop, struct store *store, const struct budget_opts *opts,
                 struct budget **out)
{
    struct budget *b = calloc(1, sizeof(*b));
    if (b == NULL) return UV_ENOMEM;
    b->loop = loop;
    b->store = store;
    b->o = *opts;
    queue(b, PHASE_TOTALS);
    *out = b;
    return 0;
}

void budget_stop(struct budget *b)
{
    if (b == NULL) return;
    b->stopping = true;
    if (b->phase == PHASE_IDLE) {
        free(b->list);
        free(b->doomed);
        free(b->results);
        links_index_free(b->links);
        free(b);
    }
}

const struct budget_stats *budget_stats(const struct budget *b)
{
    return &b->st;
}

void budget_added(struct budget *b, uint64_t size)
{
    if (b == NULL) return;
    b->st.blobs++;
    b->st.bytes += size;
    maybe_evict(b);
}

void budget_removed(struct budget *b, uint64_t size)
{
    if (b == NULL) return;
    b->st.blobs = b->st.blobs > 0 ? b->st.blobs - 1 : 0;
    b->st.bytes = b->st.bytes > size ? b->st.bytes - size : 0;
}

bool budget_fits(const struct budget *b, int64_t size)
{
    return b == NULL || b->o.max_bytes == 0 || size < 0 || (uint64_t)size <= high_mark(b);
}

/* --- One eviction now, for `content-cache evict` ------------------------------------ */

struct sync_list {
    const struct store *store;
    struct links_index *links;
    budget_blob *list;
    size_t n, cap;
    bool failed;
};

static int sync_list_blob(void *ud, const char *hex, const struct stat *sb)
{
    struct sync_list *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        budget_blob *nl = realloc(l->list, cap * sizeof(*nl));
        if (nl == NULL) {
            l->failed = true;
            return 1;
        }
        l->list = nl;
        l->cap = cap;
    }
    expire_blob_from_stat(l->store, hex, sb, l->links, &l->list[l->n++]);
    return 0;
}

long budget_evict_sync(struct store *store, const struct budget_opts *opts, uint64_t bytes_needed,
                       bool dry_run, void (*on_evicted)(void *ud, const budget_blob *blob),
                       void *ud)
{
    struct sync_list l = {.store = store};
    long removed = 0;
    if (links_index_build_sync(store, &l.links) != 0) return -ENOMEM;
    for (unsigned p = 0; p < 256 && !l.failed; p++)
        store_scan_prefix_sync(store, p, sync_list_blob, &l);
    size_t *victims = calloc(l.n ? l.n : 1, sizeof(*victims));
    if (l.failed || victims == NULL) {
        free(victims);
        free(l.list);
        links_index_free(l.links);
        return -ENOMEM;
    }
    qsort(l.list, l.n, sizeof(*l.list), by_last_pulled);
    size_t n = l.n < BUDGET_MAX_CANDIDATES ? l.n : BUDGET_MAX_CANDIDATES;
    size_t nv = pick_victims(opts, l.list, n, bytes_needed, victims);
    for (size_t i = 0; i < nv; i++) {
        const budget_blob *v = &l.list[victims[i]];
        if (!dry_run) {
            if (store_remove_if_unpulled_sync(store, v->hex, v->last_pulled + 0.001) != 0) continue;
            pulls_reset_sync(store, v->hex);
        }
        removed++;
        if (on_evicted) on_evicted(ud, v);
    }
    free(victims);
    free(l.list);
    links_index_free(l.links);
    return removed;
}

void budget_render_metrics(const void *budget, struct textbuf *out)
{
    const struct budget_stats *bs = budget_stats(budget);
    metrics_value(out, "content_cache_stored_blobs", "gauge", "Blobs in the store.", bs->blobs);
    metrics_value(out, "content_cache_stored_bytes", "gauge", "Bytes of the blobs in the store.",
                  bs->bytes);
    metrics_value(out, "content_cache_evicted_blobs_total", "counter",
                  "Blobs deleted to stay within the disk budget.", bs->evicted);
    metrics_value(out, "content_cache_evicted_bytes_total", "counter",
                  "Bytes deleted to stay within the disk budget.", bs->evicted_bytes);
    /* The budget itself, only when there is one: a dashboard draws the stored bytes
     * against these lines, and an alert compares them (no budget, no series). */
    const struct budget *b = budget;
    if (b->o.max_bytes == 0) return;
    metrics_value(out, "content_cache_disk_budget_bytes", "gauge",
                  "The disk budget (diskbudget.maxsize).", b->o.max_bytes);
    metrics_value(out, "content_cache_disk_budget_high_bytes", "gauge",
                  "Eviction starts when the stored bytes pass this (highwatermark).", high_mark(b));
    metrics_value(out, "content_cache_disk_budget_low_bytes", "gauge",
                  "Eviction stops when the stored bytes are down to this (lowwatermark).",
                  low_mark(b));
}
