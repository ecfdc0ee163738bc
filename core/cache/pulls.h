/*
 * pulls.h: how many times each stored blob was pulled, on disk, at a bounded cost.
 *
 * A blob's count is a small text file, <root>/docker/registry/v2/_content-cache/pulls/
 * <first two hex>/<hex>, holding a decimal number. Serving a GET costs one increment of a
 * counter in memory (pulls_count); every PULLS_FLUSH_MS the counts gathered are added to
 * the files on the thread pool, one work item at a time (a read, an add and a write per
 * blob pulled in that interval, under flock, so replicas sharing the root add to the same
 * file). At most PULLS_PENDING_MAX blobs wait in memory: pulls of further blobs before
 * the next flush are not counted (pulls_dropped says how many). A crash loses the counts
 * of the last interval; a stop writes them (pulls_stop).
 *
 * A blob's count starts again at 0 when it is stored again (pulls_reset_sync, at the
 * commit) and goes when the blob goes (pulls_remove_sync). Policies read the count as
 * blob.pulls (policy.h): the file's number plus what waits in memory.
 *
 * pulls_new and pulls_stop belong to the loop that made it (its timer flushes);
 * pulls_count, pulls_pending and pulls_dropped may be called from any loop of the
 * process (workers: one table for all, under a mutex, so a policy on any loop sees every
 * loop's pulls); the *_sync ones block and belong on the thread pool or in a
 * command. Errors are -errno.
 */
#ifndef CC_PULLS_H
#define CC_PULLS_H

#include <stdint.h>
#include <uv.h>

#include "cache/store.h"

#define PULLS_FLUSH_MS 2000
#define PULLS_PENDING_MAX 65536

struct pulls;

/* Starts the flush timer. NULL when memory ran out. */
struct pulls *pulls_new(uv_loop_t *loop, const struct store *st);
/* One GET of blob `hex` served. */
void pulls_count(struct pulls *p, const char *hex);
/* Pulls of `hex` counted in memory and not yet on disk. */
uint64_t pulls_pending(const struct pulls *p, const char *hex);
/* Pulls not counted because PULLS_PENDING_MAX blobs were waiting. */
uint64_t pulls_dropped(const struct pulls *p);
/* Writes what waits (blocking, at shutdown), closes the timer and frees p when the loop has
 * closed it and no flush is in flight. NULL is a no-op. */
void pulls_stop(struct pulls *p);

/* The count on disk of blob `hex` (0 when there is no file, or it does not parse). */
uint64_t pulls_read_sync(const struct store *st, const char *hex);
/* Adds n to it. */
int pulls_add_sync(const struct store *st, const char *hex, uint64_t n);
/* A blob stored again, or removed: its count goes. 0 also when there was none. */
int pulls_reset_sync(const struct store *st, const char *hex);

#endif
