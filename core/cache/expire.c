/*
 * expire.c: the blobttl sweep. See expire.h.
 */
#include "cache/expire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/digest.h"
#include "cache/links.h"
#include "cache/pulls.h"

struct doomed {
    struct expire_blob blob;
    int result; /* of the removal */
};

struct expiry {
    uv_loop_t *loop;
    struct store *store;
    struct expire_opts opts;
    uv_timer_t timer;
    uv_work_t work;
    bool work_pending;
    bool stopping;
    void (*done)(void *arg);
    void *done_arg;
    unsigned cursor;     /* the next prefix directory to scan, 0..256 */
    bool sweep_finished; /* set by the scan when the cursor wrapped */
    struct expire_blob *found;
    size_t n_found, cap_found;
    struct doomed *doomed;
    size_t n_doomed;
    struct links_index *links; /* of the sweep in progress, built when it starts */
    struct expire_stats stats;
};

static double wall_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

bool expire_touch_due(double last_pulled, double now, double default_ttl_s)
{
    /* At most one futimes per blob per second: cheap on a hot blob, and fine enough an
     * order for expiry and for least-recently-pulled eviction. */
    double threshold = 1.0;
    if (default_ttl_s > 0 && default_ttl_s / 10 < threshold) threshold = default_ttl_s / 10;
    return now - last_pulled >= threshold;
}

void expire_blob_from_stat(const struct store *store, const char *hex, const struct stat *sb,
                           const struct links_index *links, struct expire_blob *b)
{
    memcpy(b->hex, hex, DIGEST_SHA256_HEX_LEN + 1);
    b->size = (uint64_t)sb->st_size;
    b->last_pulled = store_stat_atime(sb);
    b->created = store_stat_mtime(sb);
    b->pulls = pulls_read_sync(store, hex);
    b->links = links;
}

/* The TTL of one blob: 1 with *ttl, or 0 to keep it. */
int expire_blob_ttl(const struct expire_opts *o, const struct expire_blob *b, double *ttl)
{
    if (o->ttl != NULL) {
        int rc = o->ttl(o->ud, b, ttl);
        if (rc >= 0) return rc;
    }
    *ttl = o->default_ttl_s;
    return o->default_ttl_s > 0 ? 1 : 0;
}

/* --- Scanning (thread pool) --------------------------------------------------------- */

struct scan_ctx {
    struct expiry *e;
    size_t limit;
};

static int collect(void *ud, const char *hex, const struct stat *sb)
{
    struct scan_ctx *sc = ud;
    struct expiry *e = sc->e;
    if (e->n_found == e->cap_found) {
        size_t cap = e->cap_found ? e->cap_found * 2 : 256;
        struct expire_blob *nb = realloc(e->found, cap * sizeof(*nb));
        if (nb == NULL) return 1;
        e->found = nb;
        e->cap_found = cap;
    }
    expire_blob_from_stat(e->store, hex, sb, e->links, &e->found[e->n_found++]);
    return 0;
}

static void scan_work(uv_work_t *w)
{
    struct expiry *e = w->data;
    struct scan_ctx sc = {e, e->opts.batch};
    e->n_found = 0;
    e->sweep_finished = false;
    if (e->cursor == 0 || e->links == NULL) {
        /* A sweep starts: which repositories hold which blob, as of now. */
        links_index_free(e->links);
        e->links = NULL;
        links_index_build_sync(e->store, &e->links);
    }
    while (e->cursor < 256 && e->n_found < sc.limit) {
        store_scan_prefix_sync(e->store, e->cursor, collect, &sc);
        e->cursor++;
    }
    if (e->cursor >= 256) {
        e->cursor = 0;
        e->sweep_finished = true;
    }
}

static void delete_work(uv_work_t *w)
{
    struct expiry *e = w->data;
    for (size_t i = 0; i < e->n_doomed; i++) {
        struct doomed *d = &e->doomed[i];
        /* The access time seen by the scan, with room for its rounding: a pull since
         * then moves it past this and keeps the blob. */
        d->result =
            store_remove_if_unpulled_sync(e->store, d->blob.hex, d->blob.last_pulled + 0.001);
        if (d->result == 0) pulls_reset_sync(e->store, d->blob.hex);
    }
}

static void maybe_free(struct expiry *e);

static void delete_done(uv_work_t *w, int status)
{
    struct expiry *e = w->data;
    e->work_pending = false;
    double now = wall_now();
    for (size_t i = 0; i < e->n_doomed; i++) {
        struct doomed *d = &e->doomed[i];
        if (d->result == 0) {
            e->stats.removed++;
            e->stats.removed_bytes += d->blob.size;
            log_msg(LOG_INFO, "expired blob sha256:%s: not pulled for %.0fs, %llu bytes removed",
                    d->blob.hex, now - d->blob.last_pulled, (unsigned long long)d->blob.size);
            if (e->opts.on_removed) e->opts.on_removed(e->opts.ud, &d->blob);
        } else if (d->result == -EBUSY) {
            log_msg(LOG_DEBUG, "blob sha256:%s was pulled while it expired: kept", d->blob.hex);
        } else if (d->result != -ENOENT) {
            e->stats.errors++;
            log_msg(LOG_WARN, "cannot remove expired blob sha256:%s: %s", d->blob.hex,
                    strerror(-d->result));
        }
    }
    e->n_doomed = 0;
    maybe_free(e);
}

static void scan_done(uv_work_t *w, int status)
{
    struct expiry *e = w->data;
    e->work_pending = false;
    if (e->sweep_finished) e->stats.sweeps++;
    if (e->stopping || status != 0) {
        maybe_free(e);
        return;
    }
    double now = wall_now();
    free(e->doomed);
    e->doomed = e->n_found ? calloc(e->n_found, sizeof(*e->doomed)) : NULL;
    e->n_doomed = 0;
    for (size_t i = 0; e->doomed != NULL && i < e->n_found; i++) {
        double ttl;
        if (expire_blob_ttl(&e->opts, &e->found[i], &ttl) != 1 ||
            now - e->found[i].last_pulled < ttl)
            continue;
        if (e->opts.in_use != NULL && e->opts.in_use(e->opts.ud, e->found[i].hex)) {
            e->stats.kept_in_use++;
            log_msg(LOG_DEBUG, "blob sha256:%s expired but is being read: kept for now",
                    e->found[i].hex);
            continue;
        }
        e->doomed[e->n_doomed++].blob = e->found[i];
    }
    if (e->n_doomed == 0) return;
    e->work.data = e;
    if (uv_queue_work(e->loop, &e->work, delete_work, delete_done) == 0) e->work_pending = true;
}

static void tick(uv_timer_t *t)
{
    struct expiry *e = t->data;
    if (e->work_pending || e->stopping) return;
    e->work.data = e;
    if (uv_queue_work(e->loop, &e->work, scan_work, scan_done) == 0) e->work_pending = true;
}

/* --- Life cycle -------------------------------------------------------------------- */

int expire_start(uv_loop_t *loop, struct store *store, const struct expire_opts *opts,
                 struct expiry **out)
{
    struct expiry *e = calloc(1, sizeof(*e));
    if (e == NULL) return UV_ENOMEM;
    e->loop = loop;
    e->store = store;
    e->opts = *opts;
    if (e->opts.batch == 0) e->opts.batch = 2048;
    if (e->opts.interval_ms == 0) {
        double ms = opts->default_ttl_s > 0 ? opts->default_ttl_s * 1000 / 4 : 60000;
        if (ms < 250) ms = 250;
        if (ms > 60000) ms = 60000;
        e->opts.interval_ms = (unsigned)ms;
    }
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    uv_timer_start(&e->timer, tick, e->opts.interval_ms, e->opts.interval_ms);
    *out = e;
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    struct expiry *e = h->data;
    void (*done)(void *) = e->done;
    void *arg = e->done_arg;
    free(e->found);
    free(e->doomed);
    links_index_free(e->links);
    free(e);
    if (done) done(arg);
}

static void maybe_free(struct expiry *e)
{
    if (e->stopping && !e->work_pending && !uv_is_closing((uv_handle_t *)&e->timer))
        uv_close((uv_handle_t *)&e->timer, timer_closed);
}

void expire_stop(struct expiry *e, void (*done)(void *arg), void *arg)
{
    e->stopping = true;
    e->done = done;
    e->done_arg = arg;
    uv_timer_stop(&e->timer);
    maybe_free(e);
}

const struct expire_stats *expire_stats(const struct expiry *e)
{
    return &e->stats;
}

/* --- The synchronous sweep --------------------------------------------------------- */

struct sync_ctx {
    struct store *store;
    const struct expire_opts *opts;
    double now;
    bool dry_run;
    struct links_index *links;
    long removed;
};

static int sync_visit(void *ud, const char *hex, const struct stat *sb)
{
    struct sync_ctx *sc = ud;
    struct expire_blob b;
    expire_blob_from_stat(sc->store, hex, sb, sc->links, &b);
    double ttl;
    if (expire_blob_ttl(sc->opts, &b, &ttl) != 1 || sc->now - b.last_pulled < ttl) return 0;
    if (sc->dry_run || store_remove_if_unpulled_sync(sc->store, hex, b.last_pulled + 0.001) == 0) {
        if (!sc->dry_run) pulls_reset_sync(sc->store, hex);
        sc->removed++;
        if (sc->opts->on_removed) sc->opts->on_removed(sc->opts->ud, &b);
    }
    return 0;
}

long expire_sweep_sync(struct store *store, const struct expire_opts *opts, double now,
                       bool dry_run)
{
    struct sync_ctx sc = {store, opts, now, dry_run, NULL, 0};
    if (links_index_build_sync(store, &sc.links) != 0) return -ENOMEM;
    for (unsigned p = 0; p < 256; p++)
        store_scan_prefix_sync(store, p, sync_visit, &sc);
    links_index_free(sc.links);
    return sc.removed;
}

void expire_render_metrics(const void *expiry, struct textbuf *out)
{
    const struct expire_stats *es = expire_stats(expiry);
    metrics_value(out, "content_cache_expired_blobs_total", "counter",
                  "Blobs deleted because their blobttl passed.", es->removed);
    metrics_value(out, "content_cache_expired_bytes_total", "counter",
                  "Bytes deleted because their blobttl passed.", es->removed_bytes);
}
