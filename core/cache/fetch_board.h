/*
 * fetch_board.h: the blob fetches of one process's loops (workers), by digest: how a loop
 * finds the fetch another loop runs, follows its file, and is woken as it grows.
 *
 * Each loop has its own fetch manager (fetch.h); the board is what they share, so that a
 * blob missing on every loop is fetched once. The loop that starts a fetch that stores
 * claims the blob (fetch_board_claim); a loop that finds the blob claimed follows the
 * claim (fetch_board_follow) instead of fetching: it reads the owner's temporary file
 * through a descriptor of its own (fetch_board_read dups the board's) and is woken
 * through its own uv_async_t whenever the owner publishes progress (fetch_board_publish:
 * bytes on disk, the size, verified, done or failed). Nobody polls.
 *
 * Locking: one mutex per board guards the index and every claim (its state, its
 * descriptor, its followers). It is held only inside these functions, never across a
 * callback: a follower's wake-up is a uv_async_send made under the mutex (which is
 * allowed from any thread), and the follower reads the state on its own loop. A claim
 * is freed when its owner has finished it and every follower has let go, so whichever
 * thread lets go last frees it.
 *
 * Errors are negative errno values. A struct fetch_board_follower is the follower's own
 * memory and must stay valid until fetch_board_unfollow; its async handle must stay open
 * until then too (unfollow first, then uv_close).
 */
#ifndef CC_FETCH_BOARD_H
#define CC_FETCH_BOARD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct fetch_board;
struct fetch_board_claim;

/* What a follower learns of the fetch it follows. */
struct fetch_board_view {
    int64_t size;     /* the blob's size when known, else -1 */
    uint64_t written; /* bytes in the file, from offset 0 */
    bool head_seen;   /* the upstream's head arrived: size is as known as it will be */
    bool verified;    /* the digest matched (the file may still be being committed) */
    bool done;        /* verified and committed (or verified and kept only in the file) */
    bool failed;      /* the fetch failed: followers fail too */
    bool moved;       /* the owner's file is no longer going to be the blob (it stopped
                         storing, or it was taken over): followers fetch on their own */
    bool refused;     /* with moved: the owner stopped storing because the blob is not to
                         be stored (the admit policy, the disk budget), not because its
                         disk failed: followers fetch it for their clients and do not
                         store it either */
    char error[200];  /* why, when failed */
};

struct fetch_board_follower {
    uv_async_t *wake; /* sent at every published change; the follower's loop's handle */
    struct fetch_board_claim *claim;
    struct fetch_board_follower *next;
};

/* A new, empty board (NULL when memory ran out); freed once every claim is gone. */
struct fetch_board *fetch_board_new(void);
void fetch_board_free(struct fetch_board *b);

/*
 * Claims blob `hex` for the calling loop's fetch. Returns 0 and the claim in *out, or
 * -EEXIST when another loop's fetch holds it (then follow it), or -ENOMEM.
 */
int fetch_board_claim(struct fetch_board *b, const char *hex, struct fetch_board_claim **out);

/*
 * The owner's file: fd is duplicated (the board keeps its own copy, so followers can dup
 * it whatever the owner does with its own). Returns 0 or -errno.
 */
int fetch_board_set_fd(struct fetch_board_claim *c, int fd);

/* The owner publishes its state (*v, error ignored unless failed); followers are woken
 * when anything changed. */
void fetch_board_publish(struct fetch_board_claim *c, const struct fetch_board_view *v);

/*
 * The owner lets go: the blob leaves the index (later requests claim it anew) and the
 * claim is freed once no follower holds it. Publish the final state first.
 */
void fetch_board_release(struct fetch_board_claim *c);

/*
 * Follows the claim on `hex`: 0 with fl->claim set (fl->wake must be set by the
 * caller), or -ENOENT when no loop holds it.
 */
int fetch_board_follow(struct fetch_board *b, const char *hex, struct fetch_board_follower *fl);

/*
 * The state now, into *v. When *fd is negative and the owner's file is known, *fd
 * becomes a new descriptor of it (the caller's to close).
 */
void fetch_board_read(struct fetch_board_follower *fl, struct fetch_board_view *v, int *fd);

/* Stops following: no wake-up is sent to fl->wake once this returns. */
void fetch_board_unfollow(struct fetch_board_follower *fl);

#endif
