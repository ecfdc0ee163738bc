/*
 * store.c: the on-disk blob layout, atomic commit, the start-up clean-up and the fetch
 * locks of replicas sharing the root.
 *
 * Every path below the root is walked here, one component at a time, from a descriptor
 * of the root (open_beneath: O_NOFOLLOW | O_DIRECTORY per component), and every file
 * read is opened by open_regular_at. Nothing a file under the root says is used as a
 * path: a fetch lock's tmp= only selects a name in our own temporary directory, after
 * the checks in lock_tmp_check.
 */
#include "cache/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "base/log.h"
#include "base/digest.h"

#define STORE_PATH_MAX 4096

/* The store's directories, relative to the root. */
#define REL_BLOBS "docker/registry/v2/blobs/sha256"
#define REL_TMP "docker/registry/v2/_content-cache/tmp"
#define REL_LOCKS "docker/registry/v2/_content-cache/fetching"

/* A temporary file's name: "<64 hex>.<12 hex>" (store_tmp_create_sync). */
#define TMP_NAME_LEN (64 + 1 + 12)

struct store {
    char root[STORE_PATH_MAX];
    char blobs[STORE_PATH_MAX];  /* <root>/docker/registry/v2/blobs/sha256 */
    char tmp[STORE_PATH_MAX];    /* <root>/docker/registry/v2/_content-cache/tmp */
    char locks[STORE_PATH_MAX];  /* <root>/docker/registry/v2/_content-cache/fetching */
    char owner[STORE_OWNER_MAX]; /* this process, as it signs its locks */
};

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

bool store_hex_valid(const char *hex)
{
    size_t i = 0;
    for (; hex[i] != '\0'; i++) {
        if (!lower_hex(hex + i, 1)) return false;
        if (i >= 64) return false;
    }
    return i == DIGEST_SHA256_HEX_LEN;
}

/* True when name is a temporary file's name for blob hex. */
static bool tmp_name_valid(const char *name, const char *hex)
{
    return strlen(name) == TMP_NAME_LEN && memcmp(name, hex, DIGEST_SHA256_HEX_LEN) == 0 &&
           lower_hex(name, DIGEST_SHA256_HEX_LEN) && name[64] == '.' && lower_hex(name + 65, 12);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- Walking below the root -------------------------------------------------------- */

/* What a file is, for a log line. */
static const char *kind_of(mode_t mode)
{
    return S_ISLNK(mode)                    ? "a symbolic link"
           : S_ISFIFO(mode)                 ? "a FIFO"
           : S_ISDIR(mode)                  ? "a directory"
           : S_ISSOCK(mode)                 ? "a socket"
           : S_ISCHR(mode) || S_ISBLK(mode) ? "a device"
                                            : "not a regular file";
}

/* Why a file was refused, for a log line: err from open_beneath or open_regular_at. */
static const char *refusal(int err, const struct stat *sb)
{
    return err == -ELOOP                  ? "a symbolic link"
           : err == -ENOTDIR              ? "a directory on the way is not a directory"
           : err == -EINVAL && sb != NULL ? kind_of(sb->st_mode)
                                          : strerror(-err);
}

static bool is_refusal(int err)
{
    return err == -ELOOP || err == -ENOTDIR || err == -EINVAL;
}

/* The root, as the operator configured it (the one path followed). */
static int open_root(const struct store *st)
{
    int fd = open(st->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

/*
 * Opens directory `rel` ("a/b/c") below directory fd `at`, one component at a time and
 * never through a symbolic link; with create, missing components are made (0755).
 * Returns the descriptor, or -errno: -ELOOP for a component that is a symbolic link,
 * -ENOTDIR for one that is not a directory. `at` stays open.
 */
static int open_beneath(int at, const char *rel, bool create)
{
    char buf[STORE_PATH_MAX];
    size_t n = strlen(rel);
    if (n == 0 || n >= sizeof(buf)) return -ENAMETOOLONG;
    memcpy(buf, rel, n + 1);
    int cur = -1;
    char *save = NULL;
    for (char *part = strtok_r(buf, "/", &save); part != NULL; part = strtok_r(NULL, "/", &save)) {
        int base = cur >= 0 ? cur : at;
        const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        int next = openat(base, part, flags);
        if (next < 0 && errno == ENOENT && create &&
            (mkdirat(base, part, 0755) == 0 || errno == EEXIST))
            next = openat(base, part, flags);
        int rc = next < 0 ? -errno : 0;
        struct stat sb; /* O_DIRECTORY says ENOTDIR for a link too: say which it is */
        if (rc == -ENOTDIR && fstatat(base, part, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISLNK(sb.st_mode))
            rc = -ELOOP;
        if (cur >= 0) close(cur);
        if (next < 0) return rc;
        cur = next;
    }
    return cur >= 0 ? cur : -EINVAL;
}

/* Opens one of the store's own directories (REL_*), walking from the root. */
static int open_store_dir(const struct store *st, const char *rel)
{
    int root = open_root(st);
    if (root < 0) return root;
    int fd = open_beneath(root, rel, false);
    close(root);
    return fd;
}

/*
 * Opens file `name` of directory dirfd for reading, the careful way: O_NOFOLLOW (a
 * symbolic link gives -ELOOP), O_NONBLOCK (a FIFO does not wait for a writer) and
 * O_NOCTTY, then fstat must say regular file (else -EINVAL, with the stat in *sb). The
 * descriptor returned reads normally (O_NONBLOCK is cleared).
 */
static int open_regular_at(int dirfd, const char *name, struct stat *sb)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (fstat(fd, sb) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    if (!S_ISREG(sb->st_mode)) {
        close(fd);
        return -EINVAL;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}

/* The directories of one blob, opened below the store's blob directory. */
struct blob_dirs {
    int prefix; /* blobs/sha256/<first two hex> */
    int blob;   /* .../<hex> */
};

static void blob_dirs_close(struct blob_dirs *d)
{
    if (d->blob >= 0) close(d->blob);
    if (d->prefix >= 0) close(d->prefix);
    d->blob = d->prefix = -1;
}

/* Opens (with create, makes) the directories of blob hex. 0 or -errno; the sha256
 * directory's descriptor in *blobs_out when not NULL (the caller closes it). */
static int blob_dirs_open(const struct store *st, const char *hex, bool create, struct blob_dirs *d,
                          int *blobs_out)
{
    d->prefix = d->blob = -1;
    if (!store_hex_valid(hex)) return -EINVAL;
    int root = open_root(st);
    if (root < 0) return root;
    int blobs = open_beneath(root, REL_BLOBS, create);
    close(root);
    if (blobs < 0) return blobs;
    char prefix[3] = {hex[0], hex[1], '\0'};
    d->prefix = open_beneath(blobs, prefix, create);
    int rc = d->prefix < 0 ? d->prefix : 0;
    if (rc == 0) {
        d->blob = open_beneath(d->prefix, hex, create);
        if (d->blob < 0) rc = d->blob;
    }
    if (rc == 0 && blobs_out != NULL)
        *blobs_out = blobs;
    else
        close(blobs);
    if (rc != 0) blob_dirs_close(d);
    return rc;
}

/* --- Blobs --------------------------------------------------------------------------- */

int store_open_blob_sync(const struct store *st, const char *hex, struct stat *sb)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    struct blob_dirs d;
    int rc = blob_dirs_open(st, hex, false, &d, NULL);
    bool opened_dirs = rc == 0;
    if (rc == 0) {
        rc = open_regular_at(d.blob, "data", sb);
        blob_dirs_close(&d);
    }
    if (is_refusal(rc))
        log_msg(LOG_WARN,
                "stored blob sha256:%s: %s is %s: not read (only regular files below "
                "the storage root are)",
                hex,
                opened_dirs ? "its data file" : "its directory, or the prefix directory above it,",
                refusal(rc, opened_dirs ? sb : NULL));
    return rc;
}

int store_stat_blob_sync(const struct store *st, const char *hex, struct stat *sb)
{
    struct blob_dirs d;
    int rc = blob_dirs_open(st, hex, false, &d, NULL);
    if (rc != 0) return rc;
    if (fstatat(d.blob, "data", sb, AT_SYMLINK_NOFOLLOW) != 0)
        rc = -errno;
    else if (!S_ISREG(sb->st_mode))
        rc = S_ISLNK(sb->st_mode) ? -ELOOP : -EINVAL;
    blob_dirs_close(&d);
    return rc;
}

/* --- Fetch locks: reading ------------------------------------------------------------- */

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

/*
 * Checks the temporary file a lock of blob hex names (info->tmp) and sets
 * info->tmp_name. The directory part must be this store's temporary directory: the
 * same string, or a path that resolves to the same directory (another spelling of the
 * root); the name must be one store_tmp_create_sync gives for hex; what is there now
 * must be a regular file, or nothing. Returns 0, or -EINVAL with the reason in why.
 */
static int lock_tmp_check(const struct store *st, const char *hex, struct store_lock_info *info,
                          char *why, size_t why_len)
{
    const char *slash = strrchr(info->tmp, '/');
    if (slash == NULL || !tmp_name_valid(slash + 1, hex)) {
        snprintf(why, why_len, "it names %s, not a temporary file of this blob", info->tmp);
        return -EINVAL;
    }
    int tmpdir = open_store_dir(st, REL_TMP);
    if (tmpdir < 0) {
        snprintf(why, why_len, "the temporary directory cannot be opened: %s", strerror(-tmpdir));
        return -EINVAL;
    }
    size_t dir_len = (size_t)(slash - info->tmp);
    int rc = 0;
    if (dir_len != strlen(st->tmp) || memcmp(info->tmp, st->tmp, dir_len) != 0) {
        /* Another spelling? Resolve it and compare the directories themselves. */
        char dir[sizeof(info->tmp)];
        struct stat named, ours;
        memcpy(dir, info->tmp, dir_len);
        dir[dir_len] = '\0';
        if (dir_len == 0 || stat(dir, &named) != 0 || fstat(tmpdir, &ours) != 0 ||
            !S_ISDIR(named.st_mode) || named.st_dev != ours.st_dev || named.st_ino != ours.st_ino) {
            snprintf(why, why_len, "it names %s, outside this store's temporary directory",
                     info->tmp);
            rc = -EINVAL;
        }
    }
    struct stat sb;
    if (rc == 0 && fstatat(tmpdir, slash + 1, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
        !S_ISREG(sb.st_mode)) {
        snprintf(why, why_len, "it names %s, which is %s", info->tmp, kind_of(sb.st_mode));
        rc = -EINVAL;
    }
    close(tmpdir);
    if (rc == 0) snprintf(info->tmp_name, sizeof(info->tmp_name), "%s", slash + 1);
    return rc;
}

/* Parses a lock's text (NUL-terminated, changed in place). 0 or -EINVAL. An older
 * writer may leave size= out: the size is then unknown (-1). */
static int lock_parse(char *text, struct store_lock_info *info)
{
    info->size = -1;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        size_t n = strlen(line);
        if (strncmp(line, "owner=", 6) == 0) {
            if (n - 6 >= sizeof(info->owner)) return -EINVAL;
            memcpy(info->owner, line + 6, n - 6 + 1);
        } else if (strncmp(line, "tmp=", 4) == 0) {
            if (n - 4 >= sizeof(info->tmp)) return -EINVAL;
            memcpy(info->tmp, line + 4, n - 4 + 1);
        } else if (strncmp(line, "size=", 5) == 0) {
            char *end = NULL;
            errno = 0;
            long long v = strtoll(line + 5, &end, 10);
            if (errno != 0 || end == line + 5 || *end != '\0' || v < -1) return -EINVAL;
            info->size = v;
        }
    }
    return info->owner[0] == '\0' || info->tmp[0] == '\0' ? -EINVAL : 0;
}

/*
 * Reads the fetch lock called `name` in directory locks (of blob hex) as data: see
 * store.h for what it checks and returns. An invalid lock is logged when log_invalid.
 */
static int lock_read_at(const struct store *st, int locks, const char *name, const char *hex,
                        struct store_lock_info *info, bool log_invalid)
{
    memset(info, 0, sizeof(*info));
    if (!store_hex_valid(hex)) return -EINVAL;
    char why[4300] = "";
    struct stat sb;
    int fd = open_regular_at(locks, name, &sb);
    if (fd == -ELOOP || fd == -EINVAL)
        snprintf(why, sizeof(why), "the lock file is %s", refusal(fd, &sb));
    else if (fd < 0)
        return fd; /* -ENOENT, or an error that says nothing about the lock */
    char buf[STORE_LOCK_MAX + 1];
    size_t len = 0;
    int rc = fd < 0 ? fd : 0;
    while (rc == 0 && len < sizeof(buf) - 1) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = -errno;
            close(fd);
            return rc; /* a read error says nothing about the lock */
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    if (fd >= 0) close(fd);
    if (rc == 0 && len >= STORE_LOCK_MAX) {
        rc = -EFBIG;
        snprintf(why, sizeof(why), "it is longer than a lock can be");
    }
    if (rc == 0) {
        info->age_s = now_s() - ((double)sb.st_mtim.tv_sec + (double)sb.st_mtim.tv_nsec / 1e9);
        /* A heartbeat from the future: no clock is that far off, so it is none. */
        if (info->age_s < -STORE_LOCK_STALE_S) info->age_s = STORE_LOCK_STALE_S + 1;
    }
    if (rc == 0 && len == 0) {
        if (info->age_s <= STORE_LOCK_STALE_S) return -EAGAIN; /* being written */
        rc = -EINVAL;
        snprintf(why, sizeof(why), "it is empty");
    }
    if (rc == 0) {
        buf[len] = '\0';
        rc = lock_parse(buf, info);
        if (rc != 0) snprintf(why, sizeof(why), "no owner= and tmp= line, or one too long");
    }
    if (rc == 0) rc = lock_tmp_check(st, hex, info, why, sizeof(why));
    if (rc != 0) {
        if (log_invalid)
            log_msg(LOG_WARN,
                    "fetch lock %s/%s is not a lock of this store (%s): nothing it names is "
                    "read or removed, and it is taken over like a stale lock",
                    st->locks, name, why);
        return rc;
    }
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

int store_lock_read_sync(const struct store *st, const char *hex, struct store_lock_info *info)
{
    int locks = open_store_dir(st, REL_LOCKS);
    if (locks < 0) return locks;
    int rc = lock_read_at(st, locks, hex, hex, info, true);
    close(locks);
    return rc;
}

int store_lock_tmp_open_sync(const struct store *st, const struct store_lock_info *info,
                             struct stat *sb)
{
    if (strlen(info->tmp_name) != TMP_NAME_LEN || !tmp_name_valid(info->tmp_name, info->tmp_name))
        return -EINVAL;
    int tmpdir = open_store_dir(st, REL_TMP);
    if (tmpdir < 0) return tmpdir;
    int fd = open_regular_at(tmpdir, info->tmp_name, sb);
    close(tmpdir);
    if (is_refusal(fd))
        log_msg(LOG_WARN, "temporary file %s/%s is %s: not followed", st->tmp, info->tmp_name,
                refusal(fd, sb));
    return fd;
}

/* --- Start and the clean-up ---------------------------------------------------------- */

/*
 * Removes the temporary files of fetches that are over: every file in the tmp
 * directory but those a fresh lock names (a fetch of another replica sharing this
 * root); stale and invalid locks go too. Only names in those two directories are
 * removed, never a path a lock names. Returns how many temporary files were removed.
 */
static unsigned remove_leftovers(const struct store *st, int root)
{
    unsigned n = 0;
    int locks = open_beneath(root, REL_LOCKS, false);
    int tmp = open_beneath(root, REL_TMP, false);
    int scan = locks >= 0 ? dup(locks) : -1;
    DIR *d = scan >= 0 ? fdopendir(scan) : NULL;
    if (d == NULL && scan >= 0) close(scan);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        struct store_lock_info li;
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        /* A lock being written or moved aside by a replica right now (lock_write, a
         * takeover) is that replica's to remove. */
        if (e->d_name[0] == '.' && fstatat(locks, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            now_s() - (double)sb.st_mtim.tv_sec <= STORE_LOCK_STALE_S)
            continue;
        int rc = store_hex_valid(e->d_name)
                     ? lock_read_at(st, locks, e->d_name, e->d_name, &li, true)
                     : -EINVAL;
        if (rc == -EINVAL || rc == -ELOOP || rc == -EFBIG ||
            (rc == 0 && li.age_s > STORE_LOCK_STALE_S))
            unlinkat(locks, e->d_name, 0);
    }
    if (d != NULL) closedir(d);
    scan = tmp >= 0 ? dup(tmp) : -1;
    d = scan >= 0 ? fdopendir(scan) : NULL;
    if (d == NULL && scan >= 0) close(scan);
    while (d != NULL && (e = readdir(d)) != NULL) {
        struct store_lock_info li;
        char hex[DIGEST_SHA256_HEX_LEN + 1];
        if (e->d_name[0] == '.') continue;
        snprintf(hex, sizeof(hex), "%.64s", e->d_name);
        if (locks >= 0 && store_hex_valid(hex) &&
            lock_read_at(st, locks, hex, hex, &li, false) == 0 && li.age_s <= STORE_LOCK_STALE_S &&
            strcmp(li.tmp_name, e->d_name) == 0)
            continue; /* another replica's fetch in progress */
        if (unlinkat(tmp, e->d_name, 0) == 0) n++;
    }
    if (d != NULL) closedir(d);
    if (locks >= 0) close(locks);
    if (tmp >= 0) close(tmp);
    return n;
}

/* mkdir -p of the root itself (the operator's path: links in it are followed). */
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
    snprintf(st->blobs, sizeof(st->blobs), "%s/" REL_BLOBS, st->root);
    snprintf(st->tmp, sizeof(st->tmp), "%s/" REL_TMP, st->root);
    snprintf(st->locks, sizeof(st->locks), "%s/" REL_LOCKS, st->root);
    {
        char host[64] = "?";
        unsigned char rnd[4] = {0};
        gethostname(host, sizeof(host) - 1);
        uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL);
        snprintf(st->owner, sizeof(st->owner), "%s/%d/%02x%02x%02x%02x", host, (int)getpid(),
                 rnd[0], rnd[1], rnd[2], rnd[3]);
        snprintf(st_owner_self, sizeof(st_owner_self), "%s", st->owner);
    }
    int rc = mkdirs(st->root);
    const char *failed = st->root;
    int rootfd = rc == 0 ? open_root(st) : -1;
    if (rc == 0 && rootfd < 0) rc = rootfd;
    const char *const rels[] = {REL_BLOBS, REL_TMP, REL_LOCKS};
    const char *const paths[] = {st->blobs, st->tmp, st->locks};
    for (size_t i = 0; rc == 0 && i < 3; i++) {
        int fd = open_beneath(rootfd, rels[i], true);
        if (fd < 0) {
            rc = fd;
            failed = paths[i];
        } else {
            close(fd);
        }
    }
    if (rc == 0) {
        rc = store_probe_sync(st);
        failed = st->tmp;
    }
    if (rc != 0) {
        if ((rc == -ELOOP || rc == -ENOTDIR) && failed != st->root)
            snprintf(err, errlen,
                     "storage root %s: %s: a symbolic link or not a directory on the way (nothing "
                     "below the storage root is followed: point rootdirectory at the real place)",
                     st->root, failed);
        else
            snprintf(err, errlen, "storage root %s: %s: %s", st->root, failed, strerror(-rc));
        if (rootfd >= 0) close(rootfd);
        free(st);
        return rc;
    }
    unsigned n = remove_leftovers(st, rootfd);
    close(rootfd);
    if (removed != NULL) *removed = n;
    *out = st;
    return 0;
}

int store_probe_sync(const struct store *st)
{
    /* A probe file answers what access(2) cannot (read-only mounts, full disks). */
    int tmpdir = open_store_dir(st, REL_TMP);
    if (tmpdir < 0) return tmpdir;
    char probe[64];
    snprintf(probe, sizeof(probe), ".probe-%d", (int)getpid());
    unlinkat(tmpdir, probe, 0); /* whatever was left under that name, never followed */
    int fd = openat(tmpdir, probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -errno : 0;
    if (fd >= 0) {
        rc = write(fd, "probe", 5) == 5 ? 0 : -errno;
        close(fd);
        unlinkat(tmpdir, probe, 0);
    }
    close(tmpdir);
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

/* --- Temporary files, commit, removal ------------------------------------------------ */

int store_tmp_create_sync(const struct store *st, const char *hex, char *path_out, size_t len)
{
    static atomic_uint counter; /* (loops of one process create files at once) */
    if (!store_hex_valid(hex)) return -EINVAL;
    int tmpdir = open_store_dir(st, REL_TMP);
    if (tmpdir < 0) return tmpdir;
    int rc = -EEXIST;
    for (int attempt = 0; attempt < 16; attempt++) {
        unsigned char rnd[6];
        if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) != 0)
            memset(rnd, (int)(atomic_fetch_add(&counter, 1) + 1 + (unsigned)attempt), sizeof(rnd));
        char name[TMP_NAME_LEN + 1];
        snprintf(name, sizeof(name), "%.64s.%02x%02x%02x%02x%02x%02x", hex, rnd[0], rnd[1], rnd[2],
                 rnd[3], rnd[4], rnd[5]);
        int n = snprintf(path_out, len, "%s/%s", st->tmp, name);
        if (n < 0 || (size_t)n >= len) {
            rc = -ENAMETOOLONG;
            break;
        }
        int fd = openat(tmpdir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            close(tmpdir);
            return fd;
        }
        rc = -errno;
        if (errno != EEXIST) break;
    }
    close(tmpdir);
    return rc;
}

/* The name in the temporary directory of a path store_tmp_create_sync made, or NULL. */
static const char *own_tmp_name(const struct store *st, const char *tmp_path)
{
    size_t n = strlen(st->tmp);
    if (strncmp(tmp_path, st->tmp, n) != 0 || tmp_path[n] != '/') return NULL;
    const char *name = tmp_path + n + 1;
    return strlen(name) == TMP_NAME_LEN && tmp_name_valid(name, name) ? name : NULL;
}

int store_commit_sync(const struct store *st, int fd, const char *tmp_path, const char *hex)
{
    const char *name = own_tmp_name(st, tmp_path);
    if (name == NULL || memcmp(name, hex, DIGEST_SHA256_HEX_LEN) != 0)
        return -EINVAL; /* not ours: left alone */
    int tmpdir = open_store_dir(st, REL_TMP);
    if (tmpdir < 0) return tmpdir;
    struct blob_dirs d = {-1, -1};
    int blobs = -1;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    if (rc == 0) rc = blob_dirs_open(st, hex, true, &d, &blobs);
    if (rc == 0 && renameat(tmpdir, name, d.blob, "data") != 0) rc = -errno;
    if (rc == 0) {
        /* The rename is durable once the directory holding the new name is synced; the
         * parents may have been created just now and are synced too. */
        rc = fsync(d.blob) == 0 ? 0 : -errno;
        if (rc == 0) {
            fsync(d.prefix);
            fsync(blobs);
        }
    } else {
        unlinkat(tmpdir, name, 0);
    }
    if (blobs >= 0) close(blobs);
    blob_dirs_close(&d);
    close(tmpdir);
    return rc;
}

int store_remove_sync(const struct store *st, const char *hex)
{
    struct blob_dirs d;
    int rc = blob_dirs_open(st, hex, false, &d, NULL);
    if (rc != 0) return rc;
    if (unlinkat(d.blob, "data", 0) != 0) rc = -errno;
    if (rc == 0) unlinkat(d.prefix, hex, AT_REMOVEDIR); /* fails harmlessly when not empty */
    blob_dirs_close(&d);
    return rc;
}

double store_stat_atime(const struct stat *sb)
{
    return (double)sb->st_atim.tv_sec + (double)sb->st_atim.tv_nsec / 1e9;
}

double store_stat_mtime(const struct stat *sb)
{
    return (double)sb->st_mtim.tv_sec + (double)sb->st_mtim.tv_nsec / 1e9;
}

/* --- Walking below the root, for the other modules of the store --------------------- */

int store_dir_open_sync(const struct store *st, const char *rel, bool create)
{
    int root = open_root(st);
    if (root < 0) return root;
    int fd = open_beneath(root, rel, create);
    close(root);
    return fd;
}

int store_file_open_at(int dirfd, const char *name, struct stat *sb)
{
    return open_regular_at(dirfd, name, sb);
}

int store_file_replace_at(int dirfd, const char *name, const void *data, size_t len, bool sync)
{
    char tmp[300];
    unsigned char rnd[4] = {0};
    uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL);
    int n = snprintf(tmp, sizeof(tmp), ".%s.%d.%02x%02x%02x%02x", name, (int)getpid(), rnd[0],
                     rnd[1], rnd[2], rnd[3]);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return -ENAMETOOLONG;
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    int rc = 0;
    const char *p = data;
    for (size_t done = 0; rc == 0 && done < len;) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            rc = w < 0 ? -errno : -EIO;
        else
            done += (size_t)w;
    }
    if (rc == 0 && sync && fsync(fd) != 0) rc = -errno;
    close(fd);
    if (rc == 0 && renameat(dirfd, tmp, dirfd, name) != 0) rc = -errno;
    if (rc != 0) unlinkat(dirfd, tmp, 0);
    if (rc == 0 && sync) fsync(dirfd);
    return rc;
}

int store_remove_if_unpulled_sync(const struct store *st, const char *hex, double pulled_before)
{
    struct blob_dirs d;
    int rc = blob_dirs_open(st, hex, false, &d, NULL);
    if (rc != 0) return rc;
    struct stat sb;
    if (fstatat(d.blob, "data", &sb, AT_SYMLINK_NOFOLLOW) != 0)
        rc = -errno;
    else if (store_stat_atime(&sb) > pulled_before)
        rc = -EBUSY;
    else if (unlinkat(d.blob, "data", 0) != 0)
        rc = -errno;
    if (rc == 0) unlinkat(d.prefix, hex, AT_REMOVEDIR);
    blob_dirs_close(&d);
    return rc;
}

/* Logs a blob the scans skip: at most one line every 10 s, with the count left out. */
static void scan_skipped(const char *hex, const char *what)
{
    static _Atomic long long last_s = 0;
    static atomic_uint unlogged = 0;
    long long now = (long long)now_s();
    long long last = atomic_load(&last_s);
    if (now - last < 10 || !atomic_compare_exchange_strong(&last_s, &last, now)) {
        atomic_fetch_add(&unlogged, 1);
        return;
    }
    unsigned more = atomic_exchange(&unlogged, 0);
    char also[80] = "";
    if (more > 0) snprintf(also, sizeof(also), " (and %u more since the last such line)", more);
    log_msg(LOG_WARN,
            "stored blob sha256:%s: %s: skipped by the scans (expiry, disk budget), never read; "
            "fsck names it%s",
            hex, what, also);
}

int store_scan_prefix_sync(const struct store *st, unsigned prefix, store_visit_fn fn, void *ud)
{
    char name[3];
    snprintf(name, sizeof(name), "%02x", prefix & 0xff);
    int root = open_root(st);
    if (root < 0) return root;
    int blobs = open_beneath(root, REL_BLOBS, false);
    close(root);
    if (blobs < 0) return blobs;
    int dirfd = open_beneath(blobs, name, false);
    close(blobs);
    if (dirfd < 0) return dirfd;
    DIR *d = fdopendir(dirfd);
    if (d == NULL) {
        int rc = -errno;
        close(dirfd);
        return rc;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!store_hex_valid(e->d_name) || strncmp(e->d_name, name, 2) != 0) continue;
        int blob = open_beneath(dirfd, e->d_name, false);
        if (blob < 0) {
            if (blob != -ENOENT)
                scan_skipped(e->d_name, "its directory is a symbolic link or "
                                        "not a directory");
            continue;
        }
        struct stat sb;
        int rc = fstatat(blob, "data", &sb, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
        close(blob);
        if (rc == 0 && !S_ISREG(sb.st_mode)) {
            char what[64];
            snprintf(what, sizeof(what), "its data file is %s", kind_of(sb.st_mode));
            scan_skipped(e->d_name, what);
            continue;
        }
        if (rc != 0) continue; /* removed meanwhile, or a directory without data (fsck's) */
        if (fn(ud, e->d_name, &sb) != 0) break;
    }
    closedir(d);
    return 0;
}

/* --- Fetch locks: taking, beating, giving back ---------------------------------------- */

const char *store_owner(const struct store *st)
{
    return st->owner;
}

/*
 * Creates lock `hex` in directory locks, naming tmp_path: written whole under a name of
 * its own, then linked into place (link fails with EEXIST where the lock exists, as
 * O_EXCL would), so no reader ever sees it half-written. 0, -EEXIST or -errno.
 */
static int lock_write(const struct store *st, int locks, const char *hex, const char *tmp_path,
                      int64_t size)
{
    char name[128];
    unsigned char rnd[4] = {0};
    uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL);
    snprintf(name, sizeof(name), ".%.64s.new.%d.%02x%02x%02x%02x", hex, (int)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3]);
    int fd = openat(locks, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    char buf[STORE_PATH_MAX + 256];
    int n = snprintf(buf, sizeof(buf), "owner=%s\ntmp=%s\nsize=%lld\n", st->owner, tmp_path,
                     (long long)size);
    int rc = n > 0 && n < (int)sizeof(buf) && write(fd, buf, (size_t)n) == n ? 0 : -EIO;
    if (rc == 0 && linkat(locks, name, locks, hex, 0) != 0) {
        rc = -errno;
        /* Over NFS a link can succeed and still report an error (a retransmission):
         * the file's link count says what happened. */
        struct stat sb;
        if (rc != -EEXIST && fstat(fd, &sb) == 0 && sb.st_nlink == 2) rc = 0;
    }
    close(fd);
    unlinkat(locks, name, 0);
    return rc;
}

int store_lock_acquire_sync(const struct store *st, const char *hex, const char *tmp_path,
                            int64_t size, struct store_lock_info *held)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    int locks = open_store_dir(st, REL_LOCKS);
    if (locks < 0) return locks;
    int rc = -EBUSY;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = lock_write(st, locks, hex, tmp_path, size);
        if (rc != -EEXIST) break;
        rc = lock_read_at(st, locks, hex, hex, held, true);
        if (rc == -ENOENT) continue; /* released meanwhile: try again */
        if (rc == -EAGAIN) {         /* being written by an older writer: look again */
            rc = -EBUSY;
            usleep(20000);
            continue;
        }
        if (rc == 0 && held->age_s <= STORE_LOCK_STALE_S) {
            rc = -EEXIST; /* a live owner fetches it */
            break;
        }
        if (rc != 0 && rc != -EINVAL && rc != -ELOOP && rc != -EFBIG)
            break; /* cannot read it: no judgement, no lock */
        /* Stale (its owner stopped beating, or is a dead process of this host), or not a
         * lock at all: move it aside, then create ours as usual. Of several replicas
         * that try at once, one rename succeeds; the others find no file (ENOENT) or
         * find that what they moved is not the stale lock they judged, and put it back.
         * Nothing the stale lock names is touched. */
        char stale_owner[STORE_OWNER_MAX];
        snprintf(stale_owner, sizeof(stale_owner), "%s", rc == 0 ? held->owner : "");
        char grave[128];
        snprintf(grave, sizeof(grave), ".%s.stale.%d", hex, (int)getpid());
        rc = -EBUSY;
        if (renameat(locks, hex, locks, grave) != 0) {
            if (errno == ENOENT) continue;
            rc = -errno;
            break;
        }
        struct store_lock_info moved;
        if (lock_read_at(st, locks, grave, hex, &moved, false) == 0 &&
            strcmp(moved.owner, stale_owner) != 0 && moved.age_s <= STORE_LOCK_STALE_S) {
            /* A fresh lock taken meanwhile: give it back, and follow its owner. */
            if (linkat(locks, grave, locks, hex, 0) != 0 && errno != EEXIST) {
                rc = -errno;
                unlinkat(locks, grave, 0);
                break;
            }
            unlinkat(locks, grave, 0);
            *held = moved;
            rc = -EEXIST;
            break;
        }
        unlinkat(locks, grave, 0);
    }
    close(locks);
    return rc;
}

int store_lock_touch_sync(const struct store *st, const char *hex)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    int locks = open_store_dir(st, REL_LOCKS);
    if (locks < 0) return locks;
    int rc = utimensat(locks, hex, NULL, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
    close(locks);
    return rc;
}

int store_lock_release_sync(const struct store *st, const char *hex)
{
    if (!store_hex_valid(hex)) return -EINVAL;
    int locks = open_store_dir(st, REL_LOCKS);
    if (locks < 0) return locks;
    struct store_lock_info li;
    int rc = -ENOENT; /* not ours (any more) */
    if (lock_read_at(st, locks, hex, hex, &li, false) == 0 && strcmp(li.owner, st->owner) == 0)
        rc = unlinkat(locks, hex, 0) == 0 ? 0 : -errno;
    close(locks);
    return rc;
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
