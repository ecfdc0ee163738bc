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
 * What is under the root is data, never instructions: other processes (replicas
 * sharing the root, anyone who can write there) may have put anything there. So no
 * symbolic link below the root is ever followed (directories are opened one component
 * at a time with O_NOFOLLOW), and a file is read only when it is a regular file: it is
 * opened O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block the opener) and fstat must say
 * S_ISREG. A symbolic link is refused with -ELOOP, anything else that is not a regular
 * file (or, on the way, not a directory) with -EINVAL or -ENOTDIR; refusals are logged.
 * The root itself is the operator's and is followed as configured.
 *
 * Functions named *_sync do blocking file-system calls: call them from the thread pool
 * (uv_queue_work) or at start, never on the loop thread while serving. Errors are
 * negative errno values.
 *
 * Threads: a struct store is not written after store_open (paths and the owner name),
 * so the loops of one process (workers) and the thread pool share one without a lock;
 * what several threads do at once to the same files is ordered by the file system as
 * for replicas (O_EXCL locks, renames, flock on pull counts). Open it before any other
 * thread runs.
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

/* The longest fetch lock read: a longer file is not a lock. */
#define STORE_LOCK_MAX 8192

/* A fetch lock as read from disk, checked (see store_lock_read_sync). */
struct store_lock_info {
    char owner[STORE_OWNER_MAX]; /* "host/pid/nonce" of the process fetching */
    char tmp[4096];              /* its temporary file as the lock spells it */
    char tmp_name[80];           /* that file's name in this store's temporary directory */
    int64_t size;                /* the blob's size when the owner knew it, else -1 */
    double age_s;                /* since the owner's last heartbeat; past the stale limit
                                    at once when the owner is a dead process of this host,
                                    or when the heartbeat is more than the stale limit in
                                    the future (no clock is that far off) */
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
 * finds a stale or invalid lock takes it over (moves it aside, never touching the file
 * it names). store_open removes stale and invalid locks and the temporary files no
 * fresh lock names.
 *
 * A lock is written whole under another name and linked into place, so it is never
 * seen half-written. store_lock_read_sync reads one as data: the lock file must be a
 * regular file of at most STORE_LOCK_MAX bytes; its tmp= must be a file of this store's
 * temporary directory (the directory it names, resolved, is that directory; the name is
 * "<hex>.<12 hex digits>", as store_tmp_create_sync names them for this blob) that is
 * a regular file or does not exist (yet). It returns 0, -ENOENT (no lock), -EAGAIN (an
 * empty lock touched within the stale limit: being written by an older writer), or
 * -EINVAL / -ELOOP / -EFBIG (not a lock: logged once, and taken over like a stale one).
 *
 * store_lock_acquire_sync returns 0 (the lock is ours), -EEXIST with the holder in
 * *held (a live owner fetches it), -EBUSY (no lock to be had now), or -errno.
 */
int store_lock_acquire_sync(const struct store *st, const char *hex, const char *tmp_path,
                            int64_t size, struct store_lock_info *held);
int store_lock_read_sync(const struct store *st, const char *hex, struct store_lock_info *info);
/*
 * Opens the temporary file a lock names (info as filled by store_lock_read_sync or
 * store_lock_acquire_sync), by its name in this store's temporary directory, for
 * reading: O_NOFOLLOW | O_NONBLOCK, and a regular file. Returns the fd and its stat in
 * *sb, or -errno (-ENOENT, -ELOOP, -EINVAL).
 */
int store_lock_tmp_open_sync(const struct store *st, const struct store_lock_info *info,
                             struct stat *sb);
/* Touches our lock of `hex` (never through a symbolic link). */
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
 * Opens stored blob `hex` for reading (a hit), by the rules above: returns the fd and
 * its stat in *sb; -ENOENT when it is not stored; -ELOOP, -ENOTDIR or -EINVAL (logged)
 * when its data file or a directory on the way is a symbolic link or not what it should
 * be (the caller fetches the blob: the commit replaces such a data file).
 */
int store_open_blob_sync(const struct store *st, const char *hex, struct stat *sb);
/* The stat of stored blob `hex`'s data file, by the same rules, without opening it. */
int store_stat_blob_sync(const struct store *st, const char *hex, struct stat *sb);

/*
 * Creates a new temporary file for blob `hex` (O_RDWR|O_CREAT|O_EXCL, 0644, a unique
 * name). Returns the fd and its path in path_out, or -errno.
 */
int store_tmp_create_sync(const struct store *st, const char *hex, char *path_out, size_t len);

/*
 * Commits a verified temporary file (tmp_path as store_tmp_create_sync made it):
 * fsync(fd), creates the blob's directories, renames tmp_path to the final path, fsyncs
 * the directory. The fd stays open (the caller closes it). Returns 0 or -errno (-ELOOP
 * when a directory on the way is a symbolic link: nothing is written through one); on
 * failure the temporary file is unlinked.
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
 * digits), with the stat of its data file. Entries that are not blobs are skipped; so
 * are blobs whose directory or data file is a symbolic link or not a regular file (with
 * a log line, at most one every 10 s: fsck names them all).
 * fn returns 0 to go on, non-zero to stop. Returns 0 or -errno (-ENOENT when the
 * prefix directory does not exist, which is normal).
 */
typedef int (*store_visit_fn)(void *ud, const char *hex, const struct stat *sb);
int store_scan_prefix_sync(const struct store *st, unsigned prefix, store_visit_fn fn, void *ud);

/* A stat's access time in seconds since the epoch, with its fraction. */
double store_stat_atime(const struct stat *sb);
/* A stat's modification time, the same way: for a blob's data file, when it was stored
 * (nothing writes a data file after its commit; a pull sets only its access time). */
double store_stat_mtime(const struct stat *sb);

/*
 * Walking below the root, for the store's other modules (links.h, pulls.h), by the rules
 * above: no symbolic link followed, only regular files read.
 *
 * store_dir_open_sync opens directory `rel` ("docker/registry/v2/repositories/a/b")
 * below the root one component at a time; with create, missing ones are made (0755).
 * Returns the descriptor, or -errno (-ELOOP: a component is a symbolic link, -ENOTDIR:
 * one is not a directory).
 *
 * store_file_open_at opens file `name` of directory dirfd for reading when it is a
 * regular file (O_NOFOLLOW | O_NONBLOCK, then fstat): the descriptor and its stat, or
 * -errno (-ELOOP, -EINVAL for another kind of file, -ENOENT).
 *
 * store_file_replace_at writes data[0..len) as file `name` of dirfd whole: into a
 * temporary name beside it, then renamed over it, so a reader sees the old file or the
 * new one, never a part. With sync the file and the directory are synced too. 0 or -errno.
 */
int store_dir_open_sync(const struct store *st, const char *rel, bool create);
int store_file_open_at(int dirfd, const char *name, struct stat *sb);
int store_file_replace_at(int dirfd, const char *name, const void *data, size_t len, bool sync);

#endif
