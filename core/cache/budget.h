/*
 * budget.h: how much the blob store holds, and the disk budget (diskbudget option).
 *
 * The totals (blobs, bytes) come from a scan of the store on the thread pool at start,
 * then move with every commit and removal the cache makes (a commit made while the
 * first scan runs may be counted twice: the totals err on the high side, never low).
 *
 * With a budget, passing the high watermark starts an eviction run: the stored blobs
 * are listed and stat'ed on the thread pool, the ones being read now are left out,
 * the `evict` policy (or, by default, least recently pulled first) picks which to
 * delete until the low watermark is reached, and they are deleted on the thread pool
 * after their access time was read again (a blob pulled meanwhile stays). One run at
 * a time; a run that could not reach the low watermark is retried at the next commit.
 */
#ifndef CC_BUDGET_H
#define CC_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cache/expire.h"
#include "cache/store.h"
#include "base/metrics.h"

struct budget;

/* One candidate for eviction (the same shape as an expiring blob). */
typedef struct expire_blob budget_blob;

/*
 * The evict policy: given candidates (least recently pulled first) and the bytes to
 * free, fills victims with indexes into cands, in deletion order, and returns how
 * many, or a negative error (the default order is used then).
 */
typedef long (*budget_evict_fn)(void *ud, const budget_blob *cands, size_t n, uint64_t bytes_needed,
                                size_t *victims, size_t max_victims);
/* True while blob `hex` is being read by a client: it is not evicted now. */
typedef bool (*budget_in_use_fn)(void *ud, const char *hex);

struct budget_opts {
    uint64_t max_bytes; /* 0: no budget, only the totals are kept */
    unsigned high_pct;  /* eviction starts above max_bytes * high_pct / 100 */
    unsigned low_pct;   /* and stops at or below max_bytes * low_pct / 100 */
    budget_evict_fn evict;
    budget_in_use_fn in_use;
    void *ud;
};

struct budget_stats {
    uint64_t blobs; /* stored now */
    uint64_t bytes;
    bool scanned;     /* the first scan is done */
    uint64_t runs;    /* eviction runs */
    uint64_t evicted; /* blobs deleted by eviction */
    uint64_t evicted_bytes;
    uint64_t skipped_in_use;
};

int budget_start(uv_loop_t *loop, struct store *store, const struct budget_opts *opts,
                 struct budget **out);
/* Stops; work in flight finishes first; the budget is freed then. */
void budget_stop(struct budget *b);
const struct budget_stats *budget_stats(const struct budget *b);
/* A metrics_render_fn over a struct budget: what is stored, what eviction removed, and,
 * with a budget, its size and watermarks in bytes. */
void budget_render_metrics(const void *budget, struct textbuf *out);

/* A blob of `size` bytes was stored / removed (by the cache itself). */
void budget_added(struct budget *b, uint64_t size);
void budget_removed(struct budget *b, uint64_t size);

/* False when a blob of `size` bytes cannot be stored even after eviction (larger than
 * the high watermark): such a fetch passes through without storing. */
bool budget_fits(const struct budget *b, int64_t size);

/*
 * One eviction now, synchronously (for `content-cache evict`): lists the store as an
 * eviction run does, asks opts->evict (else least recently pulled first) for bytes_needed
 * and deletes the victims it chose, in its order; on_evicted gets each. With dry_run
 * nothing is deleted and on_evicted gets each blob that would be. Returns how many, or a
 * negative error.
 */
long budget_evict_sync(struct store *store, const struct budget_opts *opts, uint64_t bytes_needed,
                       bool dry_run, void (*on_evicted)(void *ud, const budget_blob *blob),
                       void *ud);

#endif
