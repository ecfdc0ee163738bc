/*
 * store.c: the on-disk blob layout, atomic commit and the start-up clean-up.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define STORE_PATH_MAX 4096

struct store {
    char root[STORE_PATH_MAX];
    char blobs[STORE_PATH_MAX]; /* <root>/docker/registry/v2/blobs/sha256 */
    char tmp[STORE_PATH_MAX];   /* <root>/docker/registry/v2/_content-cache/tmp */
};

static int mkdirs(const char *path)
{
    char buf[STORE_PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -errno;
        buf[i] = c;
    }
    return 0;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

bool store_hex_valid(const char *hex)
{
    size_t i = 0;
    for (; hex[i] != '\0'; i++) {
        char c = hex[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        if (i >= 64)
            return false;
    }
    return i == 64;
}

/* Removes the regular files in dir; returns how many. */
static unsigned remove_files_in(const char *dir)
{
    unsigned n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[STORE_PATH_MAX];
        if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= (int)sizeof(p))
            continue;
        if (unlink(p) == 0)
            n++;
    }
    closedir(d);
    return n;
}

int store_open(const char *root, struct store **out, unsigned *removed, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return -ENOMEM;
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
    int rc = mkdirs(st->blobs);
    const char *failed = st->blobs;
    if (rc == 0) {
        rc = mkdirs(st->tmp);
        failed = st->tmp;
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
    unsigned n = remove_files_in(st->tmp);
    if (removed != NULL)
        *removed = n;
    *out = st;
    return 0;
}

int store_probe_sync(const struct store *st)
{
    /* A probe file answers what access(2) cannot (read-only mounts, full disks). */
    char probe[STORE_PATH_MAX];
    snprintf(probe, sizeof(probe), "%s/.probe-%d", st->tmp, (int)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
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
        if (n < 0 || (size_t)n >= len)
            return -ENAMETOOLONG;
        int fd = open(path_out, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

int store_commit_sync(const struct store *st, int fd, const char *tmp_path, const char *hex)
{
    char final[STORE_PATH_MAX];
    char dir[STORE_PATH_MAX];
    int rc = store_blob_path(st, hex, final, sizeof(final));
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (rc == 0) {
        snprintf(dir, sizeof(dir), "%s/%.2s/%s", st->blobs, hex, hex);
        rc = mkdirs(dir);
    }
    if (rc == 0 && rename(tmp_path, final) != 0)
        rc = -errno;
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
    if (rc != 0)
        return rc;
    if (unlink(path) != 0)
        return -errno;
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
    if (rc != 0)
        return rc;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return -errno;
    if (store_stat_atime(&sb) > pulled_before)
        return -EBUSY;
    return store_remove_sync(st, hex);
}

int store_scan_prefix_sync(const struct store *st, unsigned prefix, store_visit_fn fn, void *ud)
{
    char dir[STORE_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%02x", st->blobs, prefix & 0xff);
    DIR *d = opendir(dir);
    if (d == NULL)
        return -errno;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!store_hex_valid(e->d_name) || strncmp(e->d_name, dir + strlen(dir) - 2, 2) != 0)
            continue;
        char path[STORE_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s/data", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (fn(ud, e->d_name, &sb) != 0)
            break;
    }
    closedir(d);
    return rc;
}
