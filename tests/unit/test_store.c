/* Unit tests of store.c: layout, temporary files, commit, clean-up at start, and what
 * the store reads from under the root (fetch locks, data files) taken as data. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cache/store.h"

static const char hex[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

static char *make_root(void)
{
    static char tmpl[64];
    strcpy(tmpl, "/tmp/cc-store-XXXXXX");
    return mkdtemp(tmpl);
}

static void rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    CHECK(system(cmd) == 0);
}

static unsigned count_files(const char *dir)
{
    unsigned n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void test_hex_valid(void)
{
    CHECK(store_hex_valid(hex));
    CHECK(!store_hex_valid(""));
    CHECK(!store_hex_valid("2cf24dba"));
    CHECK(!store_hex_valid("2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"));
    CHECK(!store_hex_valid("../4dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"));
    char longer[80];
    snprintf(longer, sizeof(longer), "%s0", hex);
    CHECK(!store_hex_valid(longer));
}

static void test_layout_and_commit(void)
{
    char *root = make_root();
    struct store *st = NULL;
    char err[256];
    unsigned removed = 99;
    CHECK_INT(store_open(root, &st, &removed, err, sizeof(err)), 0);
    CHECK_INT(removed, 0);
    char path[4096];
    CHECK_INT(store_blob_path(st, hex, path, sizeof(path)), 0);
    char expect[4096];
    snprintf(expect, sizeof(expect), "%s/docker/registry/v2/blobs/sha256/2c/%s/data", root, hex);
    CHECK_STR(path, expect);

    char tmp[4096];
    int fd = store_tmp_create_sync(st, hex, tmp, sizeof(tmp));
    CHECK(fd >= 0);
    CHECK_INT(write(fd, "hello", 5), 5);
    struct stat sb;
    CHECK(stat(path, &sb) != 0); /* nothing at the final path before the commit */
    CHECK_INT(store_commit_sync(st, fd, tmp, hex), 0);
    close(fd);
    CHECK_INT(stat(path, &sb), 0);
    CHECK_INT(sb.st_size, 5);
    CHECK(stat(tmp, &sb) != 0); /* the temporary name is gone */

    CHECK_INT(store_remove_sync(st, hex), 0);
    CHECK(stat(path, &sb) != 0);
    CHECK_INT(store_remove_sync(st, hex), -ENOENT);
    store_close(st);
    rm_rf(root);
}

static void test_leftovers_removed_at_open(void)
{
    char *root = make_root();
    struct store *st = NULL;
    char err[256];
    CHECK_INT(store_open(root, &st, NULL, err, sizeof(err)), 0);
    char tmp[4096];
    for (int i = 0; i < 3; i++) {
        int fd = store_tmp_create_sync(st, hex, tmp, sizeof(tmp));
        CHECK(fd >= 0);
        close(fd);
    }
    store_close(st);
    char tmpdir[4096];
    snprintf(tmpdir, sizeof(tmpdir), "%s/docker/registry/v2/_content-cache/tmp", root);
    CHECK_INT(count_files(tmpdir), 3);
    unsigned removed = 0;
    CHECK_INT(store_open(root, &st, &removed, err, sizeof(err)), 0);
    CHECK_INT(removed, 3);
    CHECK_INT(count_files(tmpdir), 0);
    store_close(st);
    rm_rf(root);
}

static void test_unusable_root(void)
{
    struct store *st = NULL;
    char err[256] = "";
    /* A regular file where a directory must be. */
    char *root = make_root();
    char file[4096];
    snprintf(file, sizeof(file), "%s/file", root);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    fclose(f);
    CHECK(store_open(file, &st, NULL, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "storage root");
    rm_rf(root);
}

/* --- What is under the root is data ------------------------------------------------ */

static const char other_hex[] = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";

struct fixture {
    char *root;
    struct store *st;
    char tmpdir[4096], locks[4096], lock[4096], outside[4096];
};

static void fixture_open(struct fixture *fx)
{
    char err[256];
    fx->root = make_root();
    CHECK(fx->root != NULL);
    fx->st = NULL;
    CHECK_INT(store_open(fx->root, &fx->st, NULL, err, sizeof(err)), 0);
    snprintf(fx->tmpdir, sizeof(fx->tmpdir), "%s/docker/registry/v2/_content-cache/tmp", fx->root);
    snprintf(fx->locks, sizeof(fx->locks), "%s/docker/registry/v2/_content-cache/fetching",
             fx->root);
    snprintf(fx->lock, sizeof(fx->lock), "%s/%s", fx->locks, hex);
    snprintf(fx->outside, sizeof(fx->outside), "%s/outside", fx->root);
    CHECK_INT(mkdir(fx->outside, 0755), 0);
}

static void fixture_close(struct fixture *fx)
{
    store_close(fx->st);
    rm_rf(fx->root);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) return;
    fputs(text, f);
    fclose(f);
}

/* Writes a lock of blob hex naming tmp, touched `age` seconds ago (negative: ahead). */
static void write_lock(const struct fixture *fx, const char *tmp, double age)
{
    char text[8192];
    snprintf(text, sizeof(text), "owner=elsewhere/4242/0badf00d\ntmp=%s\nsize=5\n", tmp);
    unlink(fx->lock);
    write_file(fx->lock, text);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct timespec times[2] = {{.tv_sec = ts.tv_sec - (time_t)age},
                                {.tv_sec = ts.tv_sec - (time_t)age}};
    CHECK_INT(utimensat(AT_FDCWD, fx->lock, times, 0), 0);
}

static bool exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* A lock's tmp= selects a name in our own temporary directory, or the lock is none. */
static void test_lock_tmp_must_be_ours(void)
{
    struct fixture fx;
    fixture_open(&fx);
    struct store_lock_info li;
    char tmp[4200], name[100];
    snprintf(name, sizeof(name), "%s.0123456789ab", hex);

    /* Our own temporary file (not there yet, or a regular file): a lock. */
    snprintf(tmp, sizeof(tmp), "%s/%s", fx.tmpdir, name);
    write_lock(&fx, tmp, 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    CHECK_STR(li.tmp_name, name);
    CHECK_INT(li.size, 5);
    write_file(tmp, "hello");
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    struct stat sb;
    int fd = store_lock_tmp_open_sync(fx.st, &li, &sb);
    CHECK(fd >= 0);
    CHECK_INT(sb.st_size, 5);
    if (fd >= 0) close(fd);

    /* Another spelling of the same directory is resolved: still ours. */
    snprintf(tmp, sizeof(tmp), "%s/docker/./registry/v2/_content-cache/../_content-cache/tmp/%s",
             fx.root, name);
    write_lock(&fx, tmp, 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    CHECK_STR(li.tmp_name, name);

    /* Anything outside, whatever its name, is refused: a server key, a file of the same
     * name in another directory, a path that climbs out. */
    const char *const bad[] = {"/etc/passwd", "%s/outside/%s", "%s/docker/registry/v2/../%s", "%s"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(tmp, sizeof(tmp), bad[i], i == 3 ? name : fx.root, name);
        write_lock(&fx, tmp, 0);
        CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    }
    /* A name that is not this blob's temporary file. */
    snprintf(tmp, sizeof(tmp), "%s/%s.0123456789ab", fx.tmpdir, other_hex);
    write_lock(&fx, tmp, 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    snprintf(tmp, sizeof(tmp), "%s/%s.0123456789ab/../x", fx.tmpdir, hex);
    write_lock(&fx, tmp, 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);

    /* Our name, but a FIFO or a symbolic link there: refused, and never opened. */
    snprintf(tmp, sizeof(tmp), "%s/%s", fx.tmpdir, name);
    unlink(tmp);
    CHECK_INT(mkfifo(tmp, 0644), 0);
    write_lock(&fx, tmp, 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    snprintf(li.tmp_name, sizeof(li.tmp_name), "%s", name);
    CHECK_INT(store_lock_tmp_open_sync(fx.st, &li, &sb), -EINVAL); /* did not block */
    unlink(tmp);
    CHECK_INT(symlink("/etc/passwd", tmp), 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    snprintf(li.tmp_name, sizeof(li.tmp_name), "%s", name);
    CHECK_INT(store_lock_tmp_open_sync(fx.st, &li, &sb), -ELOOP);
    CHECK(exists("/etc/passwd"));
    fixture_close(&fx);
}

/* The lock file itself: a regular file, not a link, bounded, read without blocking. */
static void test_lock_file_read_carefully(void)
{
    struct fixture fx;
    fixture_open(&fx);
    struct store_lock_info li;
    CHECK_INT(mkfifo(fx.lock, 0644), 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL); /* a FIFO: did not block */
    unlink(fx.lock);

    char elsewhere[4200], tmp[4200];
    snprintf(elsewhere, sizeof(elsewhere), "%s/lock", fx.outside);
    snprintf(tmp, sizeof(tmp), "%s/%s.0123456789ab", fx.tmpdir, hex);
    char text[4400];
    snprintf(text, sizeof(text), "owner=elsewhere/1/2\ntmp=%s\nsize=5\n", tmp);
    write_file(elsewhere, text);
    CHECK_INT(symlink(elsewhere, fx.lock), 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -ELOOP);
    unlink(fx.lock);

    char big[STORE_LOCK_MAX + 100];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, text, strlen(text));
    write_file(fx.lock, big);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EFBIG);
    unlink(fx.lock);

    /* Empty: being written (an older writer) while fresh, not a lock once stale. */
    write_file(fx.lock, "");
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EAGAIN);
    struct timespec old[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    CHECK_INT(utimensat(AT_FDCWD, fx.lock, old, 0), 0);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    unlink(fx.lock);

    /* Bad sizes and missing fields. */
    snprintf(text, sizeof(text), "owner=elsewhere/1/2\ntmp=%s\nsize=-7\n", tmp);
    write_file(fx.lock, text);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    snprintf(text, sizeof(text), "tmp=%s\nsize=5\n", tmp);
    write_file(fx.lock, text);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), -EINVAL);
    fixture_close(&fx);
}

/* A heartbeat from the future is none: past the stale limit ahead, the lock is stale. */
static void test_lock_from_the_future_is_stale(void)
{
    struct fixture fx;
    fixture_open(&fx);
    struct store_lock_info li;
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s/%s.0123456789ab", fx.tmpdir, hex);
    write_lock(&fx, tmp, -3600);
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    CHECK(li.age_s > STORE_LOCK_STALE_S);
    write_lock(&fx, tmp, -2); /* a clock a little ahead: still fresh */
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    CHECK(li.age_s <= STORE_LOCK_STALE_S);
    write_lock(&fx, tmp, -3600);
    char ours[4096];
    int fd = store_tmp_create_sync(fx.st, hex, ours, sizeof(ours));
    CHECK(fd >= 0);
    CHECK_INT(store_lock_acquire_sync(fx.st, hex, ours, 5, &li), 0); /* taken over */
    CHECK_INT(store_lock_read_sync(fx.st, hex, &li), 0);
    CHECK_STR(li.owner, store_owner(fx.st));
    CHECK_INT(store_lock_release_sync(fx.st, hex), 0);
    close(fd);
    fixture_close(&fx);
}

/* A takeover moves the lock aside and removes nothing it names, inside tmp or out. */
static void test_takeover_unlinks_nothing_named(void)
{
    struct fixture fx;
    fixture_open(&fx);
    struct store_lock_info li;
    char sentinel_out[4200], sentinel_in[4200], ours[4096];
    snprintf(sentinel_out, sizeof(sentinel_out), "%s/server.key", fx.outside);
    snprintf(sentinel_in, sizeof(sentinel_in), "%s/%s.0123456789ab", fx.tmpdir, hex);
    write_file(sentinel_out, "secret");
    write_file(sentinel_in, "hello");
    int fd = store_tmp_create_sync(fx.st, hex, ours, sizeof(ours));
    CHECK(fd >= 0);
    write_lock(&fx, sentinel_out, 0); /* fresh, but not a lock of ours */
    CHECK_INT(store_lock_acquire_sync(fx.st, hex, ours, 5, &li), 0);
    CHECK_INT(store_lock_release_sync(fx.st, hex), 0);
    write_lock(&fx, sentinel_in, 60); /* stale */
    CHECK_INT(store_lock_acquire_sync(fx.st, hex, ours, 5, &li), 0);
    CHECK(exists(sentinel_out));
    CHECK(exists(sentinel_in));
    /* No lock written half-way or moved aside is left behind. */
    CHECK_INT(count_files(fx.locks), 1);
    CHECK_INT(store_lock_release_sync(fx.st, hex), 0);
    CHECK_INT(count_files(fx.locks), 0);
    close(fd);
    fixture_close(&fx);
}

/* Commits a blob "hello" (the test hex is its digest) and returns its data path. */
static void commit_hello(const struct fixture *fx, char *path, size_t len)
{
    char tmp[4096];
    int fd = store_tmp_create_sync(fx->st, hex, tmp, sizeof(tmp));
    CHECK(fd >= 0);
    CHECK_INT(write(fd, "hello", 5), 5);
    CHECK_INT(store_commit_sync(fx->st, fd, tmp, hex), 0);
    close(fd);
    CHECK_INT(store_blob_path(fx->st, hex, path, len), 0);
}

static int visit_count(void *ud, const char *h, const struct stat *sb)
{
    (*(int *)ud)++;
    return 0;
}

/* Data files: regular files only, never through a link, never blocking on a FIFO. */
static void test_blob_files_read_carefully(void)
{
    struct fixture fx;
    fixture_open(&fx);
    struct stat sb;
    CHECK_INT(store_open_blob_sync(fx.st, hex, &sb), -ENOENT);
    char data[4096];
    commit_hello(&fx, data, sizeof(data));
    int fd = store_open_blob_sync(fx.st, hex, &sb);
    CHECK(fd >= 0);
    CHECK_INT(sb.st_size, 5);
    if (fd >= 0) close(fd);
    int visits = 0;
    CHECK_INT(store_scan_prefix_sync(fx.st, 0x2c, visit_count, &visits), 0);
    CHECK_INT(visits, 1);

    char secret[4200];
    snprintf(secret, sizeof(secret), "%s/server.key", fx.outside);
    write_file(secret, "a secret longer than hello");
    unlink(data);
    CHECK_INT(symlink(secret, data), 0);
    CHECK_INT(store_open_blob_sync(fx.st, hex, &sb), -ELOOP);
    CHECK_INT(store_stat_blob_sync(fx.st, hex, &sb), -ELOOP);
    visits = 0;
    CHECK_INT(store_scan_prefix_sync(fx.st, 0x2c, visit_count, &visits), 0);
    CHECK_INT(visits, 0);

    unlink(data);
    CHECK_INT(mkfifo(data, 0644), 0);
    CHECK_INT(store_open_blob_sync(fx.st, hex, &sb), -EINVAL); /* did not block */
    CHECK_INT(store_stat_blob_sync(fx.st, hex, &sb), -EINVAL);
    visits = 0;
    CHECK_INT(store_scan_prefix_sync(fx.st, 0x2c, visit_count, &visits), 0);
    CHECK_INT(visits, 0);

    /* A blob directory that is a link to a directory holding a "data": refused, and a
     * commit writes nothing through it. */
    char dir[4200], elsewhere_data[4200];
    snprintf(dir, sizeof(dir), "%.*s", (int)(strlen(data) - 5), data);
    unlink(data);
    CHECK_INT(rmdir(dir), 0);
    snprintf(elsewhere_data, sizeof(elsewhere_data), "%s/data", fx.outside);
    write_file(elsewhere_data, "secret");
    CHECK_INT(symlink(fx.outside, dir), 0);
    CHECK_INT(store_open_blob_sync(fx.st, hex, &sb), -ELOOP);
    visits = 0;
    CHECK_INT(store_scan_prefix_sync(fx.st, 0x2c, visit_count, &visits), 0);
    CHECK_INT(visits, 0);
    char tmp[4096];
    fd = store_tmp_create_sync(fx.st, hex, tmp, sizeof(tmp));
    CHECK(fd >= 0);
    CHECK_INT(write(fd, "hello", 5), 5);
    CHECK_INT(store_commit_sync(fx.st, fd, tmp, hex), -ELOOP);
    close(fd);
    CHECK_INT(stat(elsewhere_data, &sb), 0);
    CHECK_INT(sb.st_size, 6); /* untouched */
    CHECK(!exists(tmp));
    CHECK_INT(store_remove_sync(fx.st, hex), -ELOOP);
    CHECK(exists(elsewhere_data));
    fixture_close(&fx);
}

/* Start-up clean-up: FIFOs where locks and temporary files go do not block it, and the
 * store's own directories must not be links. */
static void test_open_with_hostile_leftovers(void)
{
    struct fixture fx;
    fixture_open(&fx);
    char tmp[4200], data[4096];
    commit_hello(&fx, data, sizeof(data));
    snprintf(tmp, sizeof(tmp), "%s/%s.0123456789ab", fx.tmpdir, hex);
    CHECK_INT(mkfifo(fx.lock, 0644), 0);
    CHECK_INT(mkfifo(tmp, 0644), 0);
    char other_lock[4200];
    snprintf(other_lock, sizeof(other_lock), "%s/%s", fx.locks, other_hex);
    CHECK_INT(symlink("/etc/passwd", other_lock), 0);
    store_close(fx.st);
    char err[512] = "";
    unsigned removed = 0;
    CHECK_INT(store_open(fx.root, &fx.st, &removed, err, sizeof(err)), 0);
    CHECK_INT(removed, 1);
    CHECK(!exists(fx.lock));
    CHECK(!exists(tmp));
    CHECK(!exists(other_lock));
    CHECK(exists("/etc/passwd"));
    store_close(fx.st);

    /* tmp a link to another directory: the clean-up would empty that one. */
    char moved[4200];
    snprintf(moved, sizeof(moved), "%s/tmp", fx.outside);
    CHECK_INT(rename(fx.tmpdir, moved), 0);
    CHECK_INT(symlink(moved, fx.tmpdir), 0);
    char keep[4300];
    snprintf(keep, sizeof(keep), "%s/precious", moved);
    write_file(keep, "x");
    fx.st = NULL;
    CHECK(store_open(fx.root, &fx.st, NULL, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "symbolic link");
    CHECK(exists(keep));
    CHECK_INT(store_open(fx.root, &fx.st, NULL, err, sizeof(err)) < 0, 1);
    unlink(fx.tmpdir);
    CHECK_INT(store_open(fx.root, &fx.st, NULL, err, sizeof(err)), 0);
    fixture_close(&fx);
}

int main(void)
{
    alarm(60); /* a FIFO that blocks an open would hang the test: fail it instead */
    RUN(test_hex_valid);
    RUN(test_layout_and_commit);
    RUN(test_leftovers_removed_at_open);
    RUN(test_unusable_root);
    RUN(test_lock_tmp_must_be_ours);
    RUN(test_lock_file_read_carefully);
    RUN(test_lock_from_the_future_is_stale);
    RUN(test_takeover_unlinks_nothing_named);
    RUN(test_blob_files_read_carefully);
    RUN(test_open_with_hostile_leftovers);
    return check_summary();
}
