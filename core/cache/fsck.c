/*
 * fsck.c: the blob tree walked, every blob hashed, problems reported and, with repair,
 * removed. See fsck.h.
 *
 * The walk reads directories itself rather than through store_scan_prefix_sync, which
 * skips silently what fsck must report (stray names, data files that are not regular).
 * Without repair no struct store is opened: store_open creates directories and removes
 * the leftovers of fetches, and a check must change nothing. The paths below are the
 * layout that store.h documents. Removal is the store's: store_remove_sync for blobs,
 * store_open (which knows which temporary files a replica's fetch still needs) for
 * leftovers.
 */
#include "cache/fsck.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "cache/store.h"

#define FSCK_BLOBS_DIR "docker/registry/v2/blobs/sha256"
#define FSCK_TMP_DIR "docker/registry/v2/_content-cache/tmp"
#define FSCK_LOCKS_DIR "docker/registry/v2/_content-cache/fetching"
#define FSCK_PATH_MAX 4096
#define FSCK_READ_CHUNK (1024 * 1024)

struct leftover {
    char *path;
    bool is_lock; /* a fetch lock, else a temporary file */
};

struct walk {
    char root[FSCK_PATH_MAX];
    size_t root_len;
    bool repair;
    struct store *st; /* repair only */
    struct fsck_report *out;
    fsck_report_fn report;
    void *ud;
    unsigned char *buf;
    struct leftover *leftovers; /* found before the store was opened */
    size_t n_leftovers;
};

__attribute__((format(printf, 3, 4))) static void problem(struct walk *w, const char *what,
                                                          const char *fmt, ...)
{
    if (w->report == NULL) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    w->report(w->ud, what, msg);
}

/* The path relative to the root, for messages: path must start with the root. */
static const char *relative(const struct walk *w, const char *path)
{
    return path + w->root_len + (path[w->root_len] == '/' ? 1 : 0);
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return s[n] == '\0';
}

/* --- Hashing ---------------------------------------------------------------------- */

/* Hashes the rest of fd into hex. Returns 0 or -errno of the read. */
static int hash_fd(struct walk *w, int fd, char hex[DIGEST_SHA256_HEX_LEN + 1])
{
    struct digest_sha256 ctx;
    digest_sha256_init(&ctx);
    for (;;) {
        ssize_t n = read(fd, w->buf, FSCK_READ_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n == 0) break;
        digest_sha256_update(&ctx, w->buf, (size_t)n);
        w->out->bytes += (uint64_t)n;
    }
    unsigned char bin[32];
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    return 0;
}

/* Errors that say something about the machine or the user, not about the blob. */
static bool not_the_blobs_fault(int err)
{
    return err == -EACCES || err == -EPERM || err == -EMFILE || err == -ENFILE || err == -ENOMEM;
}

/*
 * Removes blob hex, whose data file is data_path (repair), and says how it went, for the
 * end of a problem sentence. A blob is removed only where the store itself puts it.
 */
static const char *remove_blob(struct walk *w, const char *hex, const char *data_path, char *buf,
                               size_t len)
{
    if (!w->repair) return "";
    char expected[FSCK_PATH_MAX];
    if (store_blob_path(w->st, hex, expected, sizeof(expected)) != 0 ||
        strcmp(expected, data_path) != 0) {
        snprintf(buf, len, "; not removed: the store puts this blob elsewhere");
        return buf;
    }
    int rc = store_remove_sync(w->st, hex);
    if (rc == 0 || rc == -ENOENT) {
        w->out->removed++;
        return "; removed";
    }
    snprintf(buf, len, "; not removed: %s", strerror(-rc));
    return buf;
}

/* --- The blob tree ---------------------------------------------------------------- */

/* A blob that could not be read: removed unless that says more about us than about it. */
static void unreadable(struct walk *w, const char *hex, const char *path, int err)
{
    char outcome[128];
    w->out->bad++;
    problem(w, hex, "unreadable: %s%s", strerror(-err),
            not_the_blobs_fault(err) ? "; not removed (check the user fsck runs as)"
                                     : remove_blob(w, hex, path, outcome, sizeof(outcome)));
}

/* Checks the data file of blob hex in directory dir. */
static void check_data(struct walk *w, const char *dir, const char *hex)
{
    char path[FSCK_PATH_MAX];
    char outcome[128];
    snprintf(path, sizeof(path), "%s/data", dir);
    struct stat sb;
    if (lstat(path, &sb) != 0) {
        int err = -errno;
        w->out->checked++;
        if (err != -ENOENT) {
            unreadable(w, hex, path, err);
            return;
        }
        w->out->bad++;
        const char *done = "";
        if (w->repair) {
            if (rmdir(dir) == 0) {
                w->out->removed++;
                done = "; removed";
            } else {
                snprintf(outcome, sizeof(outcome), "; not removed: %s", strerror(errno));
                done = outcome;
            }
        }
        problem(w, hex, "blob directory without a data file%s", done);
        return;
    }
    if (!S_ISREG(sb.st_mode)) {
        w->out->checked++;
        w->out->bad++;
        const char *kind = S_ISDIR(sb.st_mode)   ? "a directory"
                           : S_ISLNK(sb.st_mode) ? "a symbolic link"
                                                 : "not a regular file";
        problem(w, hex, "the data file is %s%s", kind,
                remove_blob(w, hex, path, outcome, sizeof(outcome)));
        return;
    }

    /* O_NONBLOCK and the fstat: what the lstat saw may have been replaced since (by a FIFO,
     * which must not block the check). */
    const int flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
    int fd = open(path, flags | O_NOATIME);
    if (fd < 0 && errno == EPERM) /* not the file's owner: see fsck.h */
        fd = open(path, flags);
    if (fd < 0 && errno == ENOENT) return; /* removed since the lstat (expired): nothing to check */
    w->out->checked++;
    int err = fd < 0 ? -errno : 0;
    struct stat now;
    if (err == 0 && (fstat(fd, &now) != 0 || !S_ISREG(now.st_mode))) {
        close(fd);
        w->out->bad++;
        problem(w, hex,
                "the data file was replaced by something that is not a regular file; "
                "not read%s",
                remove_blob(w, hex, path, outcome, sizeof(outcome)));
        return;
    }
    char actual[DIGEST_SHA256_HEX_LEN + 1];
    if (err == 0) {
        err = hash_fd(w, fd, actual);
        close(fd);
    }
    if (err != 0) {
        unreadable(w, hex, path, err);
        return;
    }
    if (strcmp(actual, hex) != 0) {
        w->out->bad++;
        problem(w, hex, "digest mismatch: the content (%llu bytes) hashes to sha256:%s%s",
                (unsigned long long)sb.st_size, actual,
                remove_blob(w, hex, path, outcome, sizeof(outcome)));
        return;
    }
    w->out->ok++;
}

static void stray(struct walk *w, const char *path, const char *why)
{
    w->out->stray++;
    problem(w, relative(w, path), "stray entry: %s; left in place", why);
}

/* One blob directory: "data" and nothing else. */
static void check_blob_dir(struct walk *w, const char *dir, const char *hex)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        w->out->checked++;
        w->out->bad++;
        problem(w, hex, "unreadable blob directory: %s; not removed", strerror(errno));
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strcmp(e->d_name, "data") == 0)
            continue;
        char path[FSCK_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        stray(w, path, "not part of a blob");
    }
    closedir(d);
    check_data(w, dir, hex);
}

/* One prefix directory: blob directories named <prefix><62 more hex digits>. */
static void check_prefix_dir(struct walk *w, const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        w->out->stray++; /* its blobs cannot even be counted */
        problem(w, relative(w, dir), "unreadable directory: %s; left in place", strerror(errno));
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[FSCK_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat sb;
        if (!store_hex_valid(e->d_name) || strncmp(e->d_name, prefix, 2) != 0) {
            stray(w, path, "not a blob name (64 lowercase hex digits under their first two)");
            continue;
        }
        if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            stray(w, path, "a blob name that is not a directory");
            continue;
        }
        check_blob_dir(w, path, e->d_name);
    }
    closedir(d);
}

static int walk_blobs(struct walk *w, const char *blobs)
{
    DIR *d = opendir(blobs);
    if (d == NULL) {
        int err = -errno;
        problem(w, relative(w, blobs), "cannot read the blob directory: %s", strerror(-err));
        return err;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[FSCK_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", blobs, e->d_name);
        struct stat sb;
        if (strlen(e->d_name) != 2 || !is_lower_hex(e->d_name, 2)) {
            stray(w, path, "not a prefix directory (two lowercase hex digits)");
            continue;
        }
        if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            stray(w, path, "a prefix name that is not a directory");
            continue;
        }
        check_prefix_dir(w, path, e->d_name);
    }
    closedir(d);
    return 0;
}

/* --- Leftovers of fetches: temporary files and fetch locks ----------------------- */

/*
 * True when the fetch lock of blob `hex` (a name's first 64 characters) was beaten within
 * STORE_LOCK_STALE_S: a fetch in progress, here or in a replica sharing the root, whose
 * temporary file is not a leftover. Judged by the lock's time only, which errs on the side
 * of leaving a file alone: store_open also counts as stale the lock of a dead process of
 * this host, and as a leftover a temporary file whose blob's lock names another file.
 */
static bool lock_fresh(const char *locks, const char *name, double now)
{
    char path[FSCK_PATH_MAX];
    struct stat sb;
    if (strlen(name) < 64) return false;
    snprintf(path, sizeof(path), "%s/%.64s", locks, name);
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return false; /* not a lock */
    double mtime = (double)sb.st_mtim.tv_sec + (double)sb.st_mtim.tv_nsec / 1e9;
    /* A heartbeat further in the future than that is none (store.h). */
    return now - mtime <= STORE_LOCK_STALE_S && mtime - now <= STORE_LOCK_STALE_S;
}

/* Adds every leftover of directory dir to w->leftovers: files that no fresh lock claims. */
static void find_leftovers(struct walk *w, const char *dir, const char *locks, bool is_locks,
                           double now)
{
    DIR *d = opendir(dir);
    if (d == NULL) return; /* none (the directories are made when a server starts) */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        /* ".", "..", a starting server's probe file, a lock being taken over */
        if (e->d_name[0] == '.' || lock_fresh(locks, e->d_name, now)) continue;
        char path[FSCK_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct leftover *grown = realloc(w->leftovers, (w->n_leftovers + 1) * sizeof(*grown));
        if (grown == NULL) continue; /* not reported; store_open still cleans it */
        w->leftovers = grown;
        grown[w->n_leftovers].path = strdup(path);
        grown[w->n_leftovers].is_lock = is_locks;
        if (grown[w->n_leftovers].path != NULL) w->n_leftovers++;
    }
    closedir(d);
}

/*
 * Reports the leftovers found before the store was opened: with repair, store_open has
 * removed them by the store's own rules, and each is reported removed when it is gone.
 */
static void report_leftovers(struct walk *w)
{
    for (size_t i = 0; i < w->n_leftovers; i++) {
        const char *path = w->leftovers[i].path;
        const char *kind = w->leftovers[i].is_lock ? "stale fetch lock" : "leftover temporary file";
        struct stat sb;
        w->out->temp++;
        if (!w->repair) {
            problem(w, relative(w, path), "%s", kind);
        } else if (lstat(path, &sb) != 0) {
            w->out->removed++;
            problem(w, relative(w, path), "%s; removed", kind);
        } else {
            problem(w, relative(w, path), "%s; not removed (claimed by a fetch meanwhile)", kind);
        }
        free(w->leftovers[i].path);
    }
    free(w->leftovers);
}

int fsck_run(const char *storage_root, bool repair, struct fsck_report *out, fsck_report_fn report,
             void *ud)
{
    memset(out, 0, sizeof(*out));
    struct walk w = {.repair = repair, .out = out, .report = report, .ud = ud};
    size_t rl = strlen(storage_root);
    while (rl > 1 && storage_root[rl - 1] == '/')
        rl--;
    if (rl + 128 >= sizeof(w.root)) return -ENAMETOOLONG;
    memcpy(w.root, storage_root, rl);
    w.root[rl] = '\0';
    w.root_len = rl;

    char blobs[FSCK_PATH_MAX], tmp[FSCK_PATH_MAX], locks[FSCK_PATH_MAX];
    snprintf(blobs, sizeof(blobs), "%s/%s", w.root, FSCK_BLOBS_DIR);
    snprintf(tmp, sizeof(tmp), "%s/%s", w.root, FSCK_TMP_DIR);
    snprintf(locks, sizeof(locks), "%s/%s", w.root, FSCK_LOCKS_DIR);
    struct stat sb;
    if (stat(blobs, &sb) != 0 || !S_ISDIR(sb.st_mode)) return -ENOENT;

    /* Leftovers first: opening the store (repair) removes them. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double now_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    find_leftovers(&w, tmp, locks, false, now_s);
    find_leftovers(&w, locks, locks, true, now_s);
    if (repair) {
        char err[512];
        int rc = store_open(w.root, &w.st, NULL, err, sizeof(err));
        if (rc != 0) {
            w.repair = false; /* nothing was removed */
            report_leftovers(&w);
            problem(&w, ".", "%s", err);
            return rc;
        }
    }
    report_leftovers(&w);
    w.buf = malloc(FSCK_READ_CHUNK);
    int rc = w.buf == NULL ? -ENOMEM : walk_blobs(&w, blobs);
    free(w.buf);
    if (w.st != NULL) store_close(w.st);
    return rc;
}
