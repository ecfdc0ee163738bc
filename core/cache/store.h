/*
 * store.h: blobs on disk, laid out as Docker Registry lays them out:
 *
 *   <root>/docker/registry/v2/blobs/sha256/<first two hex>/<hex>/data
 *
 * A file at that path is always complete and matches its digest: blobs are written to
 * a temporary file under <root>/docker/registry/v2/_content-cache/tmp (the same file
 * system), synced, and renamed into place only after the digest matched; the
 * directory is synced after the rename. Temporary files left by a crash are removed by
 * store_open.
 *
 * Functions named *_sync do blocking file-system calls: call them from the thread pool
 * (uv_queue_work) or at start, never on the loop thread while serving. Errors are
 * negative errno values.
 */
#ifndef CC_STORE_H
#define CC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <uv.h>

#include "base/metrics.h"

struct store;

#define STORE_OWNER_MAX 128
/* A fetch lock whose owner has not beaten its heartbeat for this long is taken over. */
#define STORE_LOCK_STALE_S 5.0
/* How often an owner beats (touches its locks). */
#define STORE_LOCK_BEAT_S 1.0

/* A fetch lock as read from disk. */
struct store_lock_info {
    char owner[STORE_OWNER_MAX]; /* "host/pid/nonce" of the process fetching */
    char tmp[4096];              /* its temporary file, which followers read */
    int64_t size;                /* the blob's size when the owner knew it, else -1 */
    double age_s;                /* since the owner's last heartbeat; past the stale limit
                                    at once when the owner is a dead process of this host */
};

/*
 * Opens the store at `root`, creating the directories it needs, and removes leftover
 * temporary files (their count in *removed, may be NULL). Returns 0 and the store in
 * *out, or -errno with the failing path in err.
 */
int store_open(const char *root, struct store **out, unsigned *removed, char *err, size_t errlen);
void store_close(struct store *st);

/*
 * Fetch locks (several processes sharing one root: replicas on NFS). Before fetching
 * blob `hex`, a process takes <root>/docker/registry/v2/_content-cache/fetching/<hex>
 * (O_EXCL), naming itself, its temporary file and the size; it touches the lock every
 * STORE_LOCK_BEAT_S while it fetches and removes it after the commit or failure.
 * Another process that finds a fresh lock follows the named temporary file; one that
 * finds a stale lock takes it over. store_open removes stale locks and the temporary
 * files no fresh lock names.
 *
 * store_lock_acquire_sync returns 0 (the lock is ours), -EEXIST with the holder in
 * *held (a live owner fetches it), or -errno.
 */
int store_lock_acquire_sync(const struct store *st, const char *hex, const char *tmp_path,
                            int64_t size, struct store_lock_info *held);
int store_lock_read_sync(const struct store *st, const char *hex, struct store_lock_info *info);
int store_lock_touch_sync(const struct store *st, const char *hex);
/* Removes the lock when it is still ours: 0, or -ENOENT when another owns it now. */
int store_lock_release_sync(const struct store *st, const char *hex);
/* This process's owner name. */
const char *store_owner(const struct store *st);

/* Whether a file can be created and written in the store now: 0 or -errno (EROFS...). */
int store_probe_sync(const struct store *st);

/*
 * A health_check_fn (metrics.h) over a struct store: store_probe_sync on the thread pool;
 * healthy ("writable") when it succeeds, else a sentence naming the root and the error.
 */
void store_health_check(void *store, uv_loop_t *loop, health_done_fn done, void *arg);

const char *store_root(const struct store *st);

/* True when `hex` is 64 lowercase hex digits (the only names the store accepts). */
bool store_hex_valid(const char *hex);

/* Writes the final path of blob `hex` into buf. Returns 0 or -ENAMETOOLONG. */
int store_blob_path(const struct store *st, const char *hex, char *buf, size_t len);

/*
 * Creates a new temporary file for blob `hex` (O_RDWR|O_CREAT|O_EXCL, 0644, a unique
 * name). Returns the fd and its path in path_out, or -errno.
 */
int store_tmp_create_sync(const struct store *st, const char *hex, char *path_out, size_t len);

/*
 * Commits a verified temporary file: fsync(fd), creates the blob's directories,
 * renames tmp_path to the final path, fsyncs the directory. The fd stays open (the
 * caller closes it). Returns 0 or -errno; on failure the temporary file is unlinked.
 */
int store_commit_sync(const struct store *st, int fd, const char *tmp_path, const char *hex);

/* Removes blob `hex` (its data file and its directory). Returns 0, -ENOENT or -errno. */
int store_remove_sync(const struct store *st, const char *hex);

/*
 * Removes blob `hex` only if its data file was not accessed (pulled) after
 * `pulled_before` (seconds since the epoch): the check and the unlink are as close as
 * the file system allows. Returns 0, -EBUSY when it was pulled meanwhile, -ENOENT, or
 * -errno.
 */
int store_remove_if_unpulled_sync(const struct store *st, const char *hex, double pulled_before);

/*
 * Calls fn for every blob under prefix directory `prefix` (0..255, the first two hex
 * digits), with the stat of its data file. Entries that are not blobs are skipped.
 * fn returns 0 to go on, non-zero to stop. Returns 0 or -errno (-ENOENT when the
 * prefix directory does not exist, which is normal).
 */
typedef int (*store_visit_fn)(void *ud, const char *hex, const struct stat *sb);
int store_scan_prefix_sync(const struct store *st, unsigned prefix, store_visit_fn fn, void *ud);

/* A stat's access time in seconds since the epoch, with its fraction. */
double store_stat_atime(const struct stat *sb);

#endif
