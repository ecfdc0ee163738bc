/*
 * fetch.h: one upstream fetch per missing blob, teed to disk and to every client.
 *
 * A fetch GETs the blob from the upstream chain into memory (the spool), and from there
 * into a temporary file of the store and into the sha256, each on the thread pool at its
 * own pace, so the loop never waits on the disk. Bytes are readable as soon as they
 * arrive: a follower sends them from the spool (fetch_in_memory, fetch_span_borrow),
 * and reads by offset from the fetch's descriptor what the spool no longer holds (it is
 * written by then). The spool is bounded: past it the upstream is paused, so the slower
 * of the disk and the hash sets the pace, not any client.
 *
 * Nothing unverified is ever served as complete: while the digest is not yet checked,
 * fetch_readable() holds back the blob's last byte (when the size is known; without one,
 * completion shows only through fetch_complete). At the end of the body the digest
 * and length are checked; a match commits the file into place (store_commit_sync) and
 * the state becomes FETCH_DONE; a mismatch, a short body or an upstream failure makes
 * it FETCH_FAILED, the temporary file is removed and the next request fetches again.
 *
 * When the disk fails (ENOSPC, EIO, ...), the fetch stops writing, removes the
 * temporary file and goes on as a pass-through: the spool then keeps its bytes until
 * every follower has read them (the upstream is paced by the slowest follower). Such a
 * fetch takes no new followers.
 *
 * Lifetime: a fetch is owned by its manager while it runs and by every reference
 * (fetch_ref/fetch_unref); followers hold a reference while they read. The fd stays
 * valid while a reference is held, also after the commit.
 */
#ifndef CC_FETCH_H
#define CC_FETCH_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "net/chain.h"
#include "cache/store.h"
#include "base/metrics.h"

struct fetch_manager;
struct fetch;
struct fetch_board;

enum fetch_state { FETCH_RUNNING, FETCH_DONE, FETCH_FAILED };

/* A follower's wake-up: called once, from the loop, at the next progress or state change. */
struct fetch_waiter {
    void (*cb)(struct fetch_waiter *w);
    struct fetch_waiter *next;
    bool queued;
};

struct fetch_stats {
    uint64_t started;     /* upstream fetches started */
    uint64_t committed;   /* blobs verified and stored */
    uint64_t failed;      /* digest mismatch, short body, upstream failure */
    uint64_t passthrough; /* fetches that lost their disk and went on from memory */
    uint64_t followed;    /* fetches that followed another replica's file */
};

struct fetch_manager *fetch_manager_new(uv_loop_t *loop, struct store *store,
                                        struct upstream_pool *pool);
/*
 * Frees the manager; every fetch must have ended, and fetch_manager_cancel_all must have
 * been called on the running loop (it closes the manager's timers: the heartbeat, which a
 * fetch that took a lock started, and the one that frees the spare chunks after a fetch:
 * without it the loop does not close).
 */
void fetch_manager_free(struct fetch_manager *m);
const struct fetch_stats *fetch_stats(const struct fetch_manager *m);
/* Fails every running fetch (at shutdown): their temporary files are removed. */
void fetch_manager_cancel_all(struct fetch_manager *m);
/* Fetches running now. */
unsigned fetch_manager_active(const struct fetch_manager *m);
/* A metrics_render_fn over a struct fetch_manager: fetches by outcome, and running. */
void fetch_render_metrics(const void *fetch_manager, struct textbuf *out);

/*
 * Loops of one process (workers) share a board (fetch_board.h): a fetch that stores
 * claims its blob there, and fetch_start on another loop for a claimed blob returns a
 * fetch that follows the claim (fetch_follows_loop: it reads the other loop's file and
 * is woken as it grows) instead of fetching again. Such a fetch fails when the fetch on
 * the other loop fails. When that one stops storing because its disk failed, or is
 * taken over, this loop takes the fetch over (and stores the blob); when it stops
 * storing by decision (fetch_dont_store, store_it false: the admit policy, the disk
 * budget), this loop fetches the blob again for its own clients and stores nothing, as
 * one loop would not have. Without a board (workers: 1) nothing changes.
 */
void fetch_manager_set_board(struct fetch_manager *m, struct fetch_board *board);
/* True when f follows a fetch another loop runs (the request joined it: coalesced). */
bool fetch_follows_loop(const struct fetch *f);
/* True when f found the blob stored once its claim and lock were taken (another loop or
 * replica committed it between the request's look at the store and the claim): f reads
 * the stored blob and asks no upstream; its requests are hits. */
bool fetch_found_stored(const struct fetch *f);

/* The running fetch of blob `hex` that still takes followers, or NULL. */
struct fetch *fetch_find(struct fetch_manager *m, const char *hex);

/*
 * Starts a fetch of blob `hex` (64 lowercase hex digits) by GET of `target`
 * ("/v2/<name>/blobs/sha256:<hex>") from the bases in order, with `headers` (the
 * first client's Authorization and Accept). expected_size is the length the upstream
 * announced in its HEAD, or -1. store_it false makes a pass-through that stores nothing
 * (a blob larger than the disk budget allows). Returns 0 and a fetch holding one
 * reference for the caller in *out, or a negative error.
 */
int fetch_start(struct fetch_manager *m, const char *hex, const struct chain_spec *spec,
                int64_t expected_size, bool store_it, struct fetch **out);

/*
 * From now on the fetch stores nothing: it goes on as a pass-through (as with store_it
 * false), its temporary file removed, its followers served from what was written and
 * then from memory. For a decision that needs the upstream's head (the admit policy and
 * the blob's length). A no-op once the blob is verified or committing, and for a fetch
 * that follows another replica's file.
 */
void fetch_dont_store(struct fetch *f);

/* Called after every blob committed into the store (for the store's totals). */
void fetch_manager_on_commit(struct fetch_manager *m,
                             void (*cb)(void *ud, const char *hex, uint64_t size), void *ud);

void fetch_ref(struct fetch *f);
void fetch_unref(struct fetch *f);

enum fetch_state fetch_state(const struct fetch *f);
/* True once the upstream's head arrived: fetch_size is as known as it will be early. */
bool fetch_head_seen(const struct fetch *f);
/* True once the blob is whole and verified (it may still be being committed). */
bool fetch_complete(const struct fetch *f);
/* The blob's size when known (from the upstream's head), else -1. */
int64_t fetch_size(const struct fetch *f);
/*
 * Bytes a follower may send now: those on disk (or, in pass-through, in the window),
 * less the last byte while the digest is unchecked.
 */
uint64_t fetch_readable(const struct fetch *f);
/* The descriptor to read the file from (pread by offset). */
uv_file fetch_fd(const struct fetch *f);
/* A sentence for a failed fetch. */
const char *fetch_error(const struct fetch *f);
/* The upstream base that served the fetch (or NULL before its head). */
const char *fetch_upstream(const struct fetch *f);

/*
 * True when the bytes at `offset` are to be taken from the spool (else from the file);
 * then fetch_copy_window copies up to len bytes at offset and returns how many (0 when
 * none are there yet). A follower reports how far it got (fetch_follow_moved) so that a
 * pass-through's spool can move on.
 */
bool fetch_in_memory(const struct fetch *f, uint64_t offset);
size_t fetch_copy_window(const struct fetch *f, uint64_t offset, char *buf, size_t len);

/*
 * The same bytes without a copy: lends up to len bytes at offset (within one piece of
 * the fetch's memory) and returns how many (0 when none are there yet); *data points at
 * them until fetch_span_release(f, *token), which the borrower must call once (before
 * its last fetch_unref). A follower sends a span straight from it.
 */
size_t fetch_span_borrow(struct fetch *f, uint64_t offset, size_t len, const char **data,
                         void **token);
void fetch_span_release(struct fetch *f, void *token);

/*
 * A follower registers so that a pass-through window waits for it, and reports its
 * offset as it sends (set fl->offset, then call fetch_follow_moved). The struct is
 * the follower's own; it must stay valid until fetch_follow_end.
 */
struct fetch_follower {
    uint64_t offset;
    struct fetch_follower *prev, *next;
};
void fetch_follow_begin(struct fetch *f, struct fetch_follower *fl);
void fetch_follow_moved(struct fetch *f);
void fetch_follow_end(struct fetch *f, struct fetch_follower *fl);

/* Queues w to be woken at the next progress; fetch_unwait takes it back. */
void fetch_wait(struct fetch *f, struct fetch_waiter *w);
void fetch_unwait(struct fetch *f, struct fetch_waiter *w);

#endif
