/*
 * expire.h: blobttl. A blob that has not been pulled for its TTL is deleted.
 *
 * The time of a blob's last pull is the access time of its data file, set explicitly
 * on each pull (blob.c calls expire_touch_due and then uv_fs_futime; explicit times
 * are kept under relatime and noatime mounts alike), so it is on disk with the blob and
 * survives restarts and crashes, and replicas sharing the storage see each other's
 * pulls.
 *
 * One timer drives a sweep over the 256 prefix directories of the store in bounded
 * batches on the thread pool: a tick lists and stats at most `batch` blobs, the loop
 * asks the TTL of each (the blob_ttl policy, or the configured blobttl), and the
 * expired ones are deleted on the thread pool after their access time was read again
 * (a blob pulled meanwhile stays). A blob that a request reads when its TTL has passed
 * (opts.in_use: on any loop of the process) stays until a sweep finds it unread; one
 * whose reader starts after that question is still served whole: its readers hold an
 * open descriptor.
 */
#ifndef CC_EXPIRE_H
#define CC_EXPIRE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cache/store.h"
#include "base/metrics.h"
#include "base/digest.h"

struct expiry;

struct links_index;

/* A stored blob as the sweep (and the disk budget) list it: what the policies' blob
 * tables are made of (policy.h), read from the store on the thread pool. */
struct expire_blob {
    char hex[DIGEST_SHA256_HEX_LEN + 1];
    uint64_t size;
    double last_pulled; /* seconds since the epoch: the data file's access time */
    double created;     /* its modification time: when it was stored */
    uint64_t pulls;     /* the count on disk (pulls.h) when it was listed */
    /* The repositories of the run that listed it (links.h): links_index_find(links, hex),
     * valid while the callback that got this blob runs. */
    const struct links_index *links;
};

/*
 * The TTL of a blob: returns 1 and the TTL in seconds in *ttl_s, 0 to keep it forever,
 * or a negative error (the configured default is used then).
 */
typedef int (*expire_ttl_fn)(void *ud, const struct expire_blob *blob, double *ttl_s);

struct expire_opts {
    double default_ttl_s; /* the configured blobttl; <= 0: none */
    expire_ttl_fn ttl;    /* NULL: every blob gets default_ttl_s */
    void *ud;
    unsigned interval_ms; /* between ticks; 0: derived from default_ttl_s */
    unsigned batch;       /* blobs looked at per tick; 0: 2048 */
    /* Called for every removal (after the files are gone), may be NULL. */
    void (*on_removed)(void *ud, const struct expire_blob *blob);
    /* True for a blob that a request reads now (blob.h, in_use.h): it is kept, and
     * looked at again by the next sweep. May be NULL. Called on the loop. */
    bool (*in_use)(void *ud, const char *hex);
};

struct expire_stats {
    uint64_t sweeps;      /* full passes over the store */
    uint64_t kept_in_use; /* expired blobs kept because they were being read */
    uint64_t removed;     /* blobs deleted */
    uint64_t removed_bytes;
    uint64_t errors;
};

/* Starts the timer. Returns 0 or a negative error. */
int expire_start(uv_loop_t *loop, struct store *store, const struct expire_opts *opts,
                 struct expiry **out);
/* Stops; work in flight finishes first; `done` (may be NULL) runs when it is freed. */
void expire_stop(struct expiry *e, void (*done)(void *arg), void *arg);
const struct expire_stats *expire_stats(const struct expiry *e);
/* A metrics_render_fn over a struct expiry: what the blobttl removed. */
void expire_render_metrics(const void *expiry, struct textbuf *out);

/* True when a blob last pulled at `last_pulled` should have its time refreshed now. */
bool expire_touch_due(double last_pulled, double now, double default_ttl_s);

/*
 * One whole sweep, synchronously (for `content-cache expire`): calls ttl as the timer
 * would and deletes what expired, printing nothing; on_removed gets every removal. With
 * dry_run nothing is deleted: on_removed gets every blob the sweep would delete now.
 * Returns how many were (or would be) removed, or a negative error.
 */
long expire_sweep_sync(struct store *store, const struct expire_opts *opts, double now,
                       bool dry_run);

/* Fills b from a blob's stat, with its pull count from disk (thread pool). */
void expire_blob_from_stat(const struct store *store, const char *hex, const struct stat *sb,
                           const struct links_index *links, struct expire_blob *b);

/* The TTL the sweep gives b: 1 and the TTL in *ttl_s, or 0 when it is kept. */
int expire_blob_ttl(const struct expire_opts *opts, const struct expire_blob *b, double *ttl_s);

#endif
