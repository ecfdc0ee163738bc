/*
 * store.c: the on-disk blob layout, atomic commit and the start-up clean-up.
 */
#include "cache/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define STORE_PATH_MAX 4096

struct store {
    char root[STORE_PATH_MAX];
    char blobs[STORE_PATH_MAX];  /* <root>/docker/registry/v2/blobs/sha256 */
    char tmp[STORE_PATH_MAX];    /* <root>/docker/registry/v2/_content-cache/tmp */
    char locks[STORE_PATH_MAX];  /* <root>/docker/registry/v2/_content-cache/fetching */
    char owner[STORE_OWNER_MAX]; /* this process, as it signs its locks */
};

static int mkdirs(const char *path)
{
    char buf[STORE_PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf)) return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
        buf[i] = c;
    }
    return 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

bool store_hex_valid(const char *hex)
{
    size_t i = 0;
    for (; hex[i] != '\0'; i++) {
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
        if (i >= 64) return false;
    }
    return i == 64;
}

/* The owner name of this process (set by store_open), to never judge itself dead. */
static char st_owner_self[STORE_OWNER_MAX];

/* False when pid is gone, or a zombie waiting for its parent. */
static bool process_alive(pid_t pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH) return false;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true; /* no /proc: trust kill */
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return true;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return !(paren != NULL && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a lock file: "owner=...\ntmp=...\nsize=...\n" and its age. 0 or -errno. */
static int lock_read(const char *path, struct store_lock_info *info)
{
    memset(info, 0, sizeof(*info));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    char buf[STORE_PATH_MAX + 256];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    struct stat sb;
    int rc = fstat(fd, &sb) == 0 ? 0 : -errno;
    close(fd);
    if (rc != 0 || n < 0) return rc ? rc : -EIO;
    buf[n] = '\0';
    info->age_s = now_s() - ((double)sb.st_mtim.tv_sec + (double)sb.st_mtim.tv_nsec / 1e9);
    info->size = -1;
    for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strncmp(line, "owner=", 6) == 0)
            snprintf(info->owner, sizeof(info->owner), "%s", line + 6);
        else if (strncmp(line, "tmp=", 4) == 0)
            snprintf(info->tmp, sizeof(info->tmp), "%s", line + 4);
        else if (strncmp(line, "size=", 5) == 0)
            info->size = strtoll(line + 5, NULL, 10);
    }
    if (info->owner[0] == '\0' || info->tmp[0] == '\0') return -EINVAL;
    /* An owner on this machine whose process is gone is dead at once, whatever the age. */
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    const char *slash = strchr(info->owner, '/');
    if (slash != NULL && (size_t)(slash - info->owner) == strlen(host) &&
        strncmp(info->owner, host, strlen(host)) == 0) {
        long pid = strtol(slash + 1, NULL, 10);
        if (pid > 0 && (pid != getpid() || strcmp(info->owner, st_owner_self) != 0) &&
            !process_alive((pid_t)pid))
            info->age_s = STORE_LOCK_STALE_S + 1;
    }
    return 0;
}

/*
 * Removes the temporary files of fetches that are over: every file in the tmp
 * directory but those a fresh lock names (a fetch of another replica sharing this
 * root); stale locks go too. Returns how many files were removed.
 */
static unsigned remove_leftovers(const struct store *st)
{
    unsigned n = 0;
    DIR *d = opendir(st->locks);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char p[STORE_PATH_MAX];
        struct store_lock_info li;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            snprintf(p, sizeof(p), "%s/%s", st->locks, e->d_name) >= (int)sizeof(p))
            continue;
        if (!store_hex_valid(e->d_name) || lock_read(p, &li) != 0 || li.age_s > STORE_LOCK_STALE_S)
            unlink(p);
    }
    if (d != NULL) closedir(d);
    d = opendir(st->tmp);
    while (d != NULL && (e = readdir(d)) != NULL) {
        char p[STORE_PATH_MAX], lock[STORE_PATH_MAX];
        struct store_lock_info li;
        if (e->d_name[0] == '.' ||
            snprintf(p, sizeof(p), "%s/%s", st->tmp, e->d_name) >= (int)sizeof(p))
            continue;
        snprintf(lock, sizeof(lock), "%s/%.64s", st->locks, e->d_name);
        if (lock_read(lock, &li) == 0 && li.age_s <= STORE_LOCK_STALE_S && strcmp(li.tmp, p) == 0)
            continue; /* another replica's fetch in progress */
        if (unlink(p) == 0) n++;
    }
    if (d != NULL) closedir(d);
    return n;
}

int store_open(const char *root, struct store **out, unsigned *removed, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof(*st));
    if (st == NULL) return -ENOMEM;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/')
        rl--;
    if (rl + 64 >= sizeof(st->root) / 2) {
        snprintf(err, errlen, "storage root %s: path too long", root);
        free(st);
        return -ENAMETOOLONG;
    }
    memcpy(st->root, root, rl);
    st->root[rl] = '\0';
    snprintf(st->blobs, sizeof(st->blobs), "%s/docker/registry/v2/blobs/sha256", st->root);
    snprintf(st->tmp, sizeof(st->tmp), "%s/docker/registry/v2/_content-cache/tmp", st->root);
    snprintf(st->locks, sizeof(st->locks), "%s/docker/registry/v2/_content-cache/fetching",
             st->root);
    {
        char host[64] = "?";
        unsigned char rnd[4] = {0};
        gethostname(host, sizeof(host) - 1);
        uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL);
        snprintf(st->owner, sizeof(st->owner), "%s/%d/%02x%02x%02x%02x", host, (int)getpid(),
                 rnd[0], rnd[1], rnd[2], rnd[3]);
        snprintf(st_owner_self, sizeof(st_owner_self), "%s", st->owner);
    }
    int rc = mkdirs(st->blobs);
    const char *failed = st->blobs;
    if (rc == 0) {
        rc = mkdirs(st->tmp);
        failed = st->tmp;
    }
    if (rc == 0) {
        rc = mkdirs(st->locks);
        failed = st->locks;
    }
    if (rc == 0) {
        rc = store_probe_sync(st);
        failed = st->tmp;
    }
    if (rc != 0) {
        snprintf(err, errlen, "storage root %s: %s: %s", st->root, failed, strerror(-rc));
        free(st);
        return rc;
    }
    unsigned n = remove_leftovers(st);
    if (removed != NULL) *removed = n;
    *out = st;
    return 0;
}

int store_probe_sync(const struct store *st)
{
    /* A probe file answers what access(2) cannot (read-only mounts, full disks). */
    char probe[STORE_PATH_MAX];
    snprintf(probe, sizeof(probe), "%s/.probe-%d", st->tmp, (int)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    int rc = write(fd, "probe", 5) == 5 ? 0 : -errno;
    close(fd);
    unlink(probe);
    return rc;
}

void store_close(struct store *st)
{
    free(st);
}

const char *store_root(const struct store *st)
{
    return st->root;
}

int store_blob_path(const struct store *st, const char *hex, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%.2s/%s/data", st->blobs, hex, hex);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int store_tmp_create_sync(const struct store *st, const char *hex, char *path_out, size_t len)
{
    static unsigned counter;
    for (int attempt = 0; attempt < 16; attempt++) {
        unsigned char rnd[6];
        if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0)
            memset(rnd, (int)(++counter + (unsigned)attempt), sizeof(rnd));
        int n = snprintf(path_out, len, "%s/%.64s.%02x%02x%02x%02x%02x%02x", st->tmp, hex, rnd[0],
                         rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
        if (n < 0 || (size_t)n >= len) return -ENAMETOOLONG;
        int fd = open(path_out, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) return fd;
        if (errno != EEXIST) return -errno;
    }
    return -EEXIST;
}

int store_commit_sync(const struct store *st, int fd, const char *tmp_path, const char *hex)
{
    char final[STORE_PATH_MAX];
    char dir[STORE_PATH_MAX];
    int rc = store_blob_path(st, hex, final, sizeof(final));
    if (rc == 0 && fsync(fd) != 0) rc = -errno;
    if (rc == 0) {
        snprintf(dir, sizeof(dir), "%s/%.2s/%s", st->blobs, hex, hex);
        rc = mkdirs(dir);
    }
    if (rc == 0 && rename(tmp_path, final) != 0) rc = -errno;
    if (rc == 0) {
        /* The rename is durable once the directory holding the new name is synced; the
         * parents were created above and are synced too, so the path survives a crash. */
        rc = fsync_dir(dir);
        if (rc == 0) {
            char parent[STORE_PATH_MAX];
            snprintf(parent, sizeof(parent), "%s/%.2s", st->blobs, hex);
            fsync_dir(parent);
            fsync_dir(st->blobs);
        }
        return rc;
    }
    unlink(tmp_path);
    return rc;
}

int store_remove_sync(const struct store *st, const char *hex)
{
    char path[STORE_PATH_MAX];
    int rc = store_blob_path(st, hex, path, sizeof(path));
    if (rc != 0) return rc;
    if (unlink(path) != 0) return -errno;
    char dir[STORE_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%.2s/%s", st->blobs, hex, hex);
    rmdir(dir); /* fails harmlessly when it holds other files */
    return 0;
}

double store_stat_atime(const struct stat *sb)
{
    return (double)sb->st_atim.tv_sec + (double)sb->st_atim.tv_nsec / 1e9;
}

int store_remove_if_unpulled_sync(const struct store *st, const char *hex, double pulled_before)
{
    char path[STORE_PATH_MAX];
    int rc = store_blob_path(st, hex, path, sizeof(path));
    if (rc != 0) return rc;
    struct stat sb;
    if (stat(path, &sb) != 0) return -errno;
    if (store_stat_atime(&sb) > pulled_before) return -EBUSY;
    return store_remove_sync(st, hex);
}

int store_scan_prefix_sync(const struct store *st, unsigned prefix, store_visit_fn fn, void *ud)
{
    char dir[STORE_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%02x", st->blobs, prefix & 0xff);
    DIR *d = opendir(dir);
    if (d == NULL) return -errno;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!store_hex_valid(e->d_name) || strncmp(e->d_name, dir + strlen(dir) - 2, 2) != 0)
            continue;
        char path[STORE_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s/data", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (fn(ud, e->d_name, &sb) != 0) break;
    }
    closedir(d);
    return rc;
}

/* --- Fetch locks: one fetch per blob between processes sharing the root ------------ */

const char *store_owner(const struct store *st)
{
    return st->owner;
}

static int lock_write(const struct store *st, const char *path, const char *tmp_path, int64_t size,
                      bool exclusive)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC), 0644);
    if (fd < 0) return -errno;
    char buf[STORE_PATH_MAX + 256];
    int n = snprintf(buf, sizeof(buf), "owner=%s\ntmp=%s\nsize=%lld\n", st->owner, tmp_path,
                     (long long)size);
    int rc = write(fd, buf, (size_t)n) == n ? 0 : -EIO;
    close(fd);
    if (rc != 0) unlink(path);
    return rc;
}

int store_lock_acquire_sync(const struct store *st, const char *hex, const char *tmp_path,
                            int64_t size, struct store_lock_info *held)
{
    char path[STORE_PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", st->locks, hex);
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = lock_write(st, path, tmp_path, size, true);
        if (rc != -EEXIST) return rc;
        rc = lock_read(path, held);
        if (rc == -ENOENT) continue; /* released meanwhile: try again */
        if (rc == 0 && held->age_s <= STORE_LOCK_STALE_S)
            return -EEXIST; /* a live owner fetches it */
        /* Stale (its owner stopped beating, or is a dead process of this host), or
         * unreadable: move it aside, then create ours as usual. Of several replicas that
         * try at once, one rename succeeds; the others find no file (ENOENT) or find
         * that what they moved is not the stale lock they judged, and put it back. */
        char stale_owner[STORE_OWNER_MAX];
        snprintf(stale_owner, sizeof(stale_owner), "%s", rc == 0 ? held->owner : "");
        char grave[STORE_PATH_MAX];
        snprintf(grave, sizeof(grave), "%s/.%s.stale.%d", st->locks, hex, (int)getpid());
        if (rename(path, grave) != 0) {
            if (errno == ENOENT) continue;
            return -errno;
        }
        struct store_lock_info moved;
        if (lock_read(grave, &moved) == 0 && strcmp(moved.owner, stale_owner) != 0) {
            /* A fresh lock taken meanwhile: give it back, and follow its owner. */
            if (link(grave, path) != 0 && errno != EEXIST) return -errno;
            unlink(grave);
            *held = moved;
            return -EEXIST;
        }
        unlink(grave);
    }
    return -EBUSY;
}

int store_lock_read_sync(const struct store *st, const char *hex, struct store_lock_info *info)
{
    char path[STORE_PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", st->locks, hex);
    return lock_read(path, info);
}

int store_lock_touch_sync(const struct store *st, const char *hex)
{
    char path[STORE_PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", st->locks, hex);
    return utimensat(AT_FDCWD, path, NULL, 0) == 0 ? 0 : -errno;
}

int store_lock_release_sync(const struct store *st, const char *hex)
{
    char path[STORE_PATH_MAX];
    struct store_lock_info li;
    snprintf(path, sizeof(path), "%s/%s", st->locks, hex);
    if (lock_read(path, &li) != 0 || strcmp(li.owner, st->owner) != 0)
        return -ENOENT; /* not ours (any more) */
    return unlink(path) == 0 ? 0 : -errno;
}

/* --- Health ------------------------------------------------------------------------- */

struct store_check {
    uv_work_t work;
    const struct store *st;
    int err;
    health_done_fn done;
    void *arg;
};

static void store_check_work(uv_work_t *w)
{
    struct store_check *c = w->data;
    c->err = store_probe_sync(c->st);
}

static void store_check_done(uv_work_t *w, int status)
{
    struct store_check *c = w->data;
    char detail[STORE_PATH_MAX + 100];
    int err = status < 0 ? status : c->err;
    if (err == 0)
        snprintf(detail, sizeof(detail), "writable");
    else
        snprintf(detail, sizeof(detail), "storage root %s is not writable: %s", c->st->root,
                 uv_strerror(err));
    health_done_fn done = c->done;
    void *arg = c->arg;
    free(c);
    done(arg, err == 0, detail);
}

void store_health_check(void *store, uv_loop_t *loop, health_done_fn done, void *arg)
{
    struct store_check *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        done(arg, false, "storage root: out of memory");
        return;
    }
    *c = (struct store_check){.st = store, .done = done, .arg = arg};
    c->work.data = c;
    if (uv_queue_work(loop, &c->work, store_check_work, store_check_done) != 0) {
        free(c);
        done(arg, false, "storage root: cannot queue the check");
    }
}
