/*
 * state.h: what the front keeps: the registered caches and each user's choice, in an
 * SQLite database under the storage root (<rootdirectory>/front/state.db), mirrored in
 * memory for reads.
 *
 * Durability: the database is in WAL mode with synchronous=FULL, so a change that was
 * reported done is on disk, and a process killed at any moment (kill -9) leaves the
 * database as it was before or after each change, never torn: SQLite rolls back an
 * unfinished transaction at the next open. The database is opened in exclusive locking
 * mode and written once at open: a second front on the same state directory is refused
 * at start rather than sharing it.
 *
 * Several loops (workers): a struct front_state is one loop's view of the state; the
 * first comes from front_state_open, one more for each further loop from
 * front_state_share. The views share one database connection and one mirror; the last
 * view closed closes them. Locking (state.c): the connection is used by one thread at a
 * time (a write's, on the thread pool, under a mutex); the mirror is under a
 * reader-writer lock, written by a write's worker right after its commit, read (and
 * copied out) by any loop. A view itself is its loop's alone.
 *
 * Reads (front_state_caches, _cache_by_*, _user_cache) answer from memory without I/O,
 * copying what they find: another loop's write may change the mirror at any moment.
 * Writes go to the database on libuv's thread pool, one at a time in the order a view
 * asked them, after front_state_attach (before it, for tools and tests, each write is
 * done before its function returns, its callback included); the writes of two views
 * are done in the order they reach the database. The database decides what a write may
 * do (a unique name, an existing cache): the mirror follows what was committed before
 * the write's callback is called, on every loop at once. A cache's id is never reused.
 *
 * Errors are negative errno values. A write that returns an error never calls its
 * callback. Everything but the thread pool's work runs on the view's loop's thread.
 */
#ifndef CC_FRONT_STATE_H
#define CC_FRONT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define FRONT_STATE_DIR "front"   /* under the storage root */
#define FRONT_STATE_DB "state.db" /* in it */
#define FRONT_CACHE_NAME_MAX 64   /* bytes of a cache's name */
#define FRONT_CACHE_HOST_MAX 512  /* bytes of its host URL */
#define FRONT_USER_MAX 255        /* bytes of a user name */

struct front_state;

struct front_cache {
    int64_t id; /* > 0 */
    char name[FRONT_CACHE_NAME_MAX + 1];
    char host[FRONT_CACHE_HOST_MAX + 1];
};

/*
 * Opens (creating it, mode 0700, and the database, 0600, when needed) the state in
 * directory `dir` and reads it into memory. Returns 0 and *out, or a negative error with
 * a sentence in err (-EBUSY: another process holds it).
 */
int front_state_open(const char *dir, struct front_state **out, char *err, size_t errlen);

/* One more view of st's state, for another loop (attach it there). Returns 0 or -ENOMEM. */
int front_state_share(struct front_state *st, struct front_state **out);

/* This view's writes go to loop's thread pool from now on. */
void front_state_attach(struct front_state *st, uv_loop_t *loop);

/* True while a write is pending (front_state_close must wait for it). */
bool front_state_busy(const struct front_state *st);

/* Frees the view; the last one closes the database and frees everything. No write of the
 * view may be pending. NULL is a no-op. */
void front_state_close(struct front_state *st);

/* --- Reads (memory) --------------------------------------------------------------------- */

/* A copy of the caches, by id, in *list (free() it; NULL when there are none). Returns
 * how many, or -ENOMEM. */
long front_state_caches(const struct front_state *st, struct front_cache **list);
/* True when the cache is there, and then (out not NULL) a copy of it in *out. */
bool front_state_cache_by_id(const struct front_state *st, int64_t id, struct front_cache *out);
bool front_state_cache_by_name(const struct front_state *st, const char *name,
                               struct front_cache *out);
/* True when user[0..len) chose a cache, and then (out not NULL) a copy of it in *out. */
bool front_state_user_cache(const struct front_state *st, const char *user, size_t len,
                            struct front_cache *out);
/* How many users have chosen a cache. */
size_t front_state_users(const struct front_state *st);

/* --- Writes (the database, then memory) ----------------------------------------------- */

/*
 * A write's end: rc 0 (for an added cache, `cache` is it, valid during the call; else
 * NULL), -EEXIST (a cache of that name exists), -ENOENT (no such cache), -EIO (the
 * database failed: the message was logged).
 */
typedef void (*front_state_cb)(void *arg, int rc, const struct front_cache *cache);

/* Registers a cache (name and host as given, checked by the caller). Returns 0, -EINVAL
 * (too long), -ENOMEM. */
int front_state_add_cache(struct front_state *st, const char *name, const char *host,
                          front_state_cb cb, void *arg);
/* Removes cache `id`; the users who chose it have none from then on. */
int front_state_remove_cache(struct front_state *st, int64_t id, front_state_cb cb, void *arg);
/* Sets user's cache (cache_id 0: none). */
int front_state_set_user_cache(struct front_state *st, const char *user, int64_t cache_id,
                               front_state_cb cb, void *arg);

#endif
